"""Ray's ``scheduling_strategy`` option as Dask worker restrictions (in the caller's process).

* ``None``/``"DEFAULT"``: Dask places the task (data locality, resources, load). ``None`` in
  a task of a placement group that captures its children: the group, any bundle.
* ``"SPREAD"``: each task is restricted loosely (``allow_other_workers=True``) to the next
  worker, round robin over the workers able to run it; actors go to the worker with the fewest
  actors (the rule they follow anyway).
* ``NodeAffinitySchedulingStrategy(node_id, soft)``: a node is a host (``nodes()``'s
  ``NodeID``: any worker on it, a worker its nanny restarted included), or one worker (the
  address ``get_runtime_context().get_node_id()`` gives inside a task), or the driver's host
  (its ``get_node_id()``: the workers on this machine). Hard: only there; an unknown node fails
  with ``TaskUnschedulableError`` (``ActorUnschedulableError``). Soft: there while it exists
  (``allow_other_workers=True``), else anywhere.
* ``PlacementGroupSchedulingStrategy``: the task carries its group and bundle
  (``PLACEMENT_ANNOTATION``), and daskgen's scheduler plugin restricts it to the bundle's
  worker (``_scheduler.placement``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import socket
import string
import time
from dataclasses import dataclass, field
from typing import Any

from .. import _runtime
from .._options import worker_fits
from .._protocol import CLUSTER_OP, PG_BUNDLE_OP, PLACEMENT_ANNOTATION, WORKERS_OP
from ..exceptions import (
    ActorPlacementGroupRemoved,
    ActorUnschedulableError,
    TaskUnschedulableError,
)
from .placement import PlacementGroup, PlacementGroupSchedulingStrategy

GONE = (
    "The node specified via NodeAffinitySchedulingStrategy doesn't exist any more or is "
    "infeasible, and soft=False was specified."
)
PENDING_WAIT_S = 30.0  # s: how long an actor's creation waits for its placement group


class NodeAffinitySchedulingStrategy:
    """Run a task or actor on node ``node_id`` (see the module's docstring for what a node is
    here); with ``soft``, elsewhere if that node is gone."""

    _daskgen_strategy = "node_affinity"

    def __init__(
        self,
        node_id: str,
        soft: bool,
        _spill_on_unavailable: bool = False,
        _fail_on_unavailable: bool = False,
    ) -> None:
        if not isinstance(node_id, str):
            node_id = node_id.hex()
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy({self.node_id!r}, soft={self.soft})"


@dataclass
class Where:
    """Where a call may run: Dask annotations for its task, the group it runs in (for
    ``get_current_placement_group``), or the error it fails with; for an actor, the workers
    it may be created on (None: any)."""

    annotations: dict[str, Any] = field(default_factory=dict)
    placement: tuple[PlacementGroup, bool] | None = None
    error: BaseException | None = None
    workers: list[str] | None = None


def _strategy(options: dict[str, Any]) -> Any:
    strategy = options.get("scheduling_strategy")
    if strategy is None:
        current = _runtime.current_placement.get()
        if current is not None and current[1]:  # the parent captures its children
            return PlacementGroupSchedulingStrategy(current[0], -1, True)
    return strategy


def _request(options: dict[str, Any]) -> dict[str, float]:
    """The resources a call asks for, as Ray shows them."""
    out = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0)}
    out.update(options.get("resources") or {})
    return {name: amount for name, amount in out.items() if amount}


def _in_group(
    strategy: PlacementGroupSchedulingStrategy, options: dict[str, Any], name: str
) -> Where:
    group = strategy.placement_group
    if group is None:
        return Where()
    if not isinstance(group, PlacementGroup):
        raise TypeError(
            "PlacementGroupSchedulingStrategy needs a PlacementGroup (from placement_group()), "
            f"not {type(group).__name__}"
        )
    index = strategy.placement_group_bundle_index
    if not getattr(strategy, "_gate", False):
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not -1 <= index < group.bundle_count
        ):
            raise ValueError(
                f"placement group bundle index {index} is invalid. Valid placement group "
                f"indexes: 0-{group.bundle_count - 1}"
            )
        bundles = group.bundle_specs if index == -1 else [group.bundle_specs[index]]
        request = _request(options)
        if not any(worker_fits(request, bundle) for bundle in bundles):
            raise ValueError(
                f"Cannot schedule {name} with the placement group because the resource request "
                f"{request} cannot fit into any bundles for the placement group, "
                f"{group.bundle_specs}."
            )
    capture = bool(strategy.placement_group_capture_child_tasks)
    annotation = {PLACEMENT_ANNOTATION: {"group": str(group.id), "bundle": index}}
    return Where(annotation, placement=(group, capture))


def _cluster() -> list[dict[str, Any]]:
    client = _runtime.client()
    return list(client.sync(getattr(client.scheduler, CLUSTER_OP)))


@functools.lru_cache(maxsize=1)
def _local_hosts() -> frozenset[str]:
    """This machine's names and addresses, as Dask workers here may report their host."""
    from distributed.utils import get_ip

    hosts = {"127.0.0.1", "localhost", socket.gethostname()}
    for find in (get_ip, lambda: socket.gethostbyname(socket.gethostname())):
        try:
            hosts.add(find())
        except OSError:
            pass
    return frozenset(hosts)


def node_workers(node_id: str) -> tuple[list[str], list[str]]:
    """The Dask restriction for node ``node_id`` (addresses or hosts) and the workers on it
    now; ``ValueError`` if ``node_id`` is no node id at all."""
    workers = [w for w in _cluster() if w["status"] in ("running", "paused")]
    if "://" in node_id:
        found = [w["address"] for w in workers if w["address"] == node_id]
        return found, found
    if node_id == _runtime.client().id:  # the driver's get_node_id(): its host
        hosts = _local_hosts()
    elif node_id and all(c in string.hexdigits for c in node_id):
        hosts = frozenset(
            w["host"] for w in workers if hashlib.sha1(w["host"].encode()).hexdigest() == node_id
        )
    else:
        raise ValueError(
            f"Invalid node_id {node_id!r}. Node ID must be a valid hex string. To get a list of "
            "all nodes and their IDs in your cluster, use ray.nodes() (or, inside a task, "
            "get_runtime_context().get_node_id())."
        )
    on = [w for w in workers if w["host"] in hosts]
    return sorted({w["host"] for w in on}), [w["address"] for w in on]


_turn = itertools.count()
_spread_cache: list[Any] = [0.0, {}]  # [when read, {worker: resources}]


def _spread_worker(options: dict[str, Any]) -> str | None:
    """The next worker, round robin, among those able to run the call (re-read each second)."""
    when, able = _spread_cache
    if time.monotonic() - when > 1.0:
        client = _runtime.client()
        able = client.sync(getattr(client.scheduler, WORKERS_OP))["able"]
        _spread_cache[:] = [time.monotonic(), able]
    wanted = {k: v for k, v in _request(options).items() if k != "CPU"}
    fit = sorted(w for w, declared in able.items() if worker_fits(wanted, declared))
    return fit[next(_turn) % len(fit)] if fit else None


def for_task(options: dict[str, Any], name: str) -> Where:
    """Where a remote function's call may run (checked now: a bad strategy raises here)."""
    strategy = _strategy(options)
    if strategy is None or strategy == "DEFAULT":
        return Where()
    if strategy == "SPREAD":
        worker = _spread_worker(options)
        return Where({"workers": [worker], "allow_other_workers": True} if worker else {})
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        return _in_group(strategy, options, name)
    restriction, _ = node_workers(strategy.node_id)
    if restriction:
        return Where({"workers": restriction, "allow_other_workers": bool(strategy.soft)})
    return Where() if strategy.soft else Where(error=TaskUnschedulableError(GONE))


def for_actor(options: dict[str, Any], name: str) -> Where:
    """Where an actor may be created: ``workers`` to choose among (None: any); raises if it
    cannot be created (an unknown node, a removed or never placed group)."""
    strategy = options.get("scheduling_strategy")
    if strategy is None or isinstance(strategy, str):
        return Where()
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        _, workers = node_workers(strategy.node_id)
        if workers:
            return Where(workers=workers if not strategy.soft else None)
        if strategy.soft:
            return Where()
        raise ActorUnschedulableError(GONE)
    where = _in_group(strategy, options, name)
    if where.placement is None:
        return where
    group = where.placement[0]
    client = _runtime.client()
    deadline = time.monotonic() + PENDING_WAIT_S
    while True:
        found = client.sync(
            getattr(client.scheduler, PG_BUNDLE_OP),
            id=str(group.id),
            index=strategy.placement_group_bundle_index,
        )
        if found["state"] == "REMOVED":
            raise ActorPlacementGroupRemoved()
        if found["workers"]:
            where.workers = found["workers"]
            return where
        if time.monotonic() > deadline:
            raise ActorUnschedulableError(
                f"its placement group {group.id} was not created within {PENDING_WAIT_S} s (no "
                "worker can hold its bundles): wait for pg.ready() before creating actors in it"
            )
        try:
            group.wait(timeout_seconds=1.0)
        except ValueError:
            pass  # removed meanwhile: said above on the next round
