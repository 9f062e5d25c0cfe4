"""Ray's own ``init`` keywords, turned into what daskgen and Dask do (runs in the driver).

Ray scripts call ``ray.init(include_dashboard=False, logging_level=..., namespace=...,
runtime_env={...}, address="auto")``; run unchanged (``python -m daskgen``), each must do what
it means here, or say plainly what it does not do, rather than fail with a bare ``TypeError``
from inside the cluster's start.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from typing import Any

import dask

ADDRESS_ENV = "DASKGEN_ADDRESS"

# Keywords of Ray's init daskgen cannot honour, and what to use on Dask instead.
_UNSUPPORTED = {
    "dashboard_host": "dashboard_address='HOST:PORT'",
    "dashboard_port": "dashboard_address=':PORT'",
    "local_mode": "num_cpus=1 (one worker process runs the tasks one at a time)",
    "job_config": "Dask has no jobs: use init()'s own keywords",
    "storage": "Dask has no cluster storage: write to a shared filesystem from the tasks",
}
# Accepted for Ray's sake, with nothing to do on Dask (warned once).
_NO_EFFECT = {
    "object_store_memory": "values live in the Dask workers' memory (bounded by memory_limit=)",
    "_system_config": "Ray's internal settings have no Dask counterpart (use dask.config)",
    "_memory": "Dask has no cluster-wide memory reservation (use memory_limit=)",
    "configure_logging": "daskgen uses Python's logging as Dask does",
    "log_to_driver_level": "",
    "_node_ip_address": "the embedded cluster listens on host= (default 127.0.0.1)",
}

_warned: set[str] = set()


def resolve_address(address: str | None) -> str | None:
    """``address``, ``"auto"`` resolved: ``DASKGEN_ADDRESS``, else Dask's ``scheduler-address``
    setting, else a clear error (Ray's ``ConnectionError``)."""
    if address != "auto":
        return address or os.environ.get(ADDRESS_ENV) or None
    found = os.environ.get(ADDRESS_ENV) or dask.config.get("scheduler-address", None)
    if not found:
        raise ConnectionError(
            "Could not find any running Dask scheduler for address='auto': set the "
            f"{ADDRESS_ENV} environment variable (or Dask's scheduler-address setting) to the "
            "scheduler's address, or call init() without an address to start an embedded "
            "cluster."
        )
    return str(found)


def take_ray_keywords(kwargs: dict[str, Any], embedded: bool) -> dict[str, Any]:
    """Remove Ray's keywords from ``kwargs`` (the rest go to the cluster or the client), apply
    those that apply, and return what the session keeps (``namespace``)."""
    for name, instead in _UNSUPPORTED.items():
        if name in kwargs:
            raise TypeError(f"init() does not support Ray's {name}=; on Dask use {instead}.")
    for name, why in _NO_EFFECT.items():
        if name in kwargs:
            kwargs.pop(name)
            _warn_once(
                name, f"init({name}=...) has no effect on daskgen" + (f": {why}" if why else "")
            )
    include_dashboard = kwargs.pop("include_dashboard", None)
    if include_dashboard is False and embedded:
        kwargs.setdefault("dashboard_address", None)
    level = kwargs.pop("logging_level", None)
    if level is not None:
        for logger in ("daskgen", "distributed"):
            logging.getLogger(logger).setLevel(level)
    temp_dir = kwargs.pop("_temp_dir", None)
    if temp_dir is not None and embedded:
        worker_kwargs = kwargs.setdefault("worker_kwargs", {})
        worker_kwargs.setdefault("local_directory", str(temp_dir))
    runtime_env = kwargs.pop("runtime_env", None)
    if runtime_env:
        _apply_runtime_env(runtime_env, kwargs, embedded)
    namespace = kwargs.pop("namespace", None)
    if namespace is not None and not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    return {"namespace": namespace or f"anonymous-{uuid.uuid4()}"}


def _apply_runtime_env(runtime_env: Any, kwargs: dict[str, Any], embedded: bool) -> None:
    """``env_vars`` become the embedded workers' environment; everything else (and
    ``env_vars`` on a cluster daskgen did not start, whose workers are running already) is
    ignored with a warning naming it."""
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict, not {type(runtime_env).__name__}")
    ignored = sorted(set(runtime_env) - {"env_vars"})
    env_vars = runtime_env.get("env_vars")
    if env_vars:
        if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
        ):
            raise TypeError("runtime_env['env_vars'] must be a dict of str to str")
        if embedded:
            worker_kwargs = kwargs.setdefault("worker_kwargs", {})
            worker_kwargs["env"] = {**worker_kwargs.get("env", {}), **env_vars}
        else:
            ignored.append("env_vars")
    if ignored:
        _warn_once(
            "runtime_env:" + ",".join(ignored),
            f"init(runtime_env=...): {', '.join(ignored)} ignored: daskgen does not set up "
            "the environment of workers it did not start. Install what the tasks need in the "
            "workers' environment (or use distributed.diagnostics.plugin.PipInstall, "
            "Client.upload_file, or dask worker's --preload).",
        )


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)
