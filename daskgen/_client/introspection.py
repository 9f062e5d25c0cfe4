"""Ray's cluster introspection (``cluster_resources``, ``available_resources``, ``nodes``,
``get_gpu_ids``) from what the Dask scheduler knows of its workers (in the driver, or a task).

Ray counts resources per node; here a node is a host, which may run several Dask workers. A
worker that declares no ``CPU`` resource (a plain ``dask worker``) counts its threads as CPUs,
as daskgen places tasks there (one per thread). ``memory`` is the workers' memory limits.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import _dask_internals as dx
from .. import _runtime
from .._protocol import CLUSTER_OP
from .install import ensure_served


def _workers() -> list[dict[str, Any]]:
    client = _runtime.client()
    ensure_served(client)
    return list(client.sync(getattr(client.scheduler, CLUSTER_OP)))


def _declared(worker: dict[str, Any]) -> dict[str, float]:
    out = {name: float(v) for name, v in worker["resources"].items()}
    out.setdefault("CPU", float(worker["nthreads"]))
    out["memory"] = float(worker["memory_limit"])
    return out


def _in_use(worker: dict[str, Any]) -> dict[str, float]:
    used = {name: float(v) for name, v in worker["used_resources"].items()}
    if "CPU" not in worker["resources"]:
        used["CPU"] = float(min(worker["processing"], worker["nthreads"]))
    return used


def _add(total: dict[str, float], more: dict[str, float]) -> None:
    for name, amount in more.items():
        total[name] = total.get(name, 0.0) + amount


def cluster_resources() -> dict[str, float]:
    """The resources of every worker together, with a ``node:<host>`` entry per host."""
    total: dict[str, float] = {}
    for worker in _workers():
        _add(total, _declared(worker))
        total[f"node:{worker['host']}"] = 1.0
    return total


def available_resources() -> dict[str, float]:
    """``cluster_resources()`` less what running tasks hold (resources with none left are
    left out, as Ray does)."""
    free: dict[str, float] = {}
    for worker in _workers():
        used = _in_use(worker)
        _add(free, {k: v - used.get(k, 0.0) for k, v in _declared(worker).items()})
        free[f"node:{worker['host']}"] = 1.0
    return {k: v for k, v in free.items() if v > 0}


def nodes() -> list[dict[str, Any]]:
    """One entry per worker host, with Ray's keys (those Dask has no counterpart for are zero
    or empty); ``DaskWorkers`` lists the workers on the host."""
    hosts: dict[str, list[dict[str, Any]]] = {}
    for worker in _workers():
        hosts.setdefault(worker["host"], []).append(worker)
    out = []
    for host, workers in hosts.items():
        resources: dict[str, float] = {}
        for worker in workers:
            _add(resources, _declared(worker))
        resources[f"node:{host}"] = 1.0
        alive = any(w["status"] in ("running", "paused") for w in workers)
        out.append(
            {
                "NodeID": hashlib.sha1(host.encode()).hexdigest(),
                "Alive": alive,
                "NodeManagerAddress": host,
                "NodeManagerHostname": host,
                "NodeManagerPort": 0,
                "ObjectManagerPort": 0,
                "ObjectStoreSocketName": "",
                "RayletSocketName": "",
                "MetricsExportPort": 0,
                "NodeName": host,
                "RuntimeEnvAgentPort": 0,
                "DeathReason": 0,
                "DeathReasonMessage": "",
                "alive": alive,
                "Resources": resources,
                "Labels": {},
                "DaskWorkers": sorted(w["address"] for w in workers),
            }
        )
    return out


def get_gpu_ids() -> list[int]:
    """The GPUs of the running task or actor: ``0 .. n-1`` for the ``GPU`` resource it holds
    (Dask does not number devices); ``[]`` in the driver."""
    worker = _runtime.in_worker_task()
    if worker is None:
        return []
    key = dx.worker_current_key(worker)
    held = _runtime.current_resources.get()  # a direct call's (``_worker.direct``)
    if held is None:
        held = dx.worker_current_resources(worker, key) if key is not None else {}
    return list(range(int(held.get("GPU", 0))))
