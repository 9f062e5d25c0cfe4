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

from .._job import check_namespace, check_runtime_env

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
    "labels": "Dask places tasks by worker resources (declare them with resources=)",
    "logging_format": "configure Python's logging (the 'daskgen' and 'distributed' loggers)",
    "logging_config": "configure Python's logging (the 'daskgen' and 'distributed' loggers)",
    "enable_resource_isolation": "Dask bounds each worker's memory with memory_limit=",
    "cgroup_path": "Dask bounds each worker's memory with memory_limit=",
    "system_reserved_cpu": "size the cluster with num_cpus=",
    "system_reserved_memory": "Dask bounds each worker's memory with memory_limit=",
    "proxy_server_url": "",
    "_metrics_export_port": "the Dask scheduler serves Prometheus metrics at /metrics of its "
    "dashboard",
    "_node_name": "",
    "_plasma_directory": "values live in the Dask workers' memory (spilled to their "
    "local_directory)",
    "_skip_env_hook": "",
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
    those that apply, and return what the session keeps (``namespace``, ``runtime_env``,
    checked: it is shipped once the client exists)."""
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
    runtime_env = check_runtime_env(kwargs.pop("runtime_env", None), job_level=True)
    env_vars = (runtime_env or {}).get("env_vars")
    if env_vars and embedded:
        # The embedded workers start with them too (code that runs outside daskgen's calls,
        # as in Ray's worker processes); on any cluster, every call applies them.
        worker_kwargs = kwargs.setdefault("worker_kwargs", {})
        worker_kwargs["env"] = {**worker_kwargs.get("env", {}), **env_vars}
    namespace = kwargs.pop("namespace", None)
    check_namespace(namespace)
    return {
        "namespace": namespace or str(uuid.uuid4()),  # Ray's anonymous namespace
        "namespace_given": namespace is not None,
        "runtime_env": runtime_env,
    }


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)
