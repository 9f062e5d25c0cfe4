"""Placement groups, the scheduler's half (runs in the scheduler's process, inside daskgen's
plugin): which worker holds each bundle, and where each task of a group may run.

What "reserved" means on Dask
-----------------------------
A bundle (a resource dict such as ``{"CPU": 1}``) is booked on one worker whose declared
resources (``CPU`` defaults to its threads) can hold it beside the bundles of every other
daskgen group booked there. The booking lives here, in daskgen's plugin, so daskgen's other
groups never double-book a worker and new actors (``_client.actors``) prefer workers with
unbooked room; Dask itself is not told: tasks of plain Dask clients, and daskgen tasks outside
any group, still run on a booked worker by its own resources (a user's cluster is shared, and
daskgen never changes how other clients are scheduled). A group is placed all at once, or
stays ``PENDING`` (re-tried when a worker joins or another group is removed).

A task (or an actor's creation) in a group carries :data:`PLACEMENT_ANNOTATION`; as its graph
arrives, it is restricted (Dask's worker restrictions) to the worker holding its bundle, or
to every worker of the group for bundle -1; while the group is not placed it is restricted to
no worker and waits in Dask's ``no-worker`` state. When a worker holding bundles leaves, they
are booked again elsewhere (``RESCHEDULING`` until then) and the group's waiting tasks follow
them. ``remove`` cancels the group's tasks not running yet with ``TaskPlacementGroupRemoved``.

Request handlers (added by the plugin, see ``routes``): ``daskgen_pg_create``,
``daskgen_pg_remove``, ``daskgen_pg_table``, ``daskgen_pg_lookup``, ``daskgen_pg_bundle``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .. import _dask_internals as dx
from .._protocol import GATE_BUNDLE, as_key
from ..exceptions import PG_REMOVED_REASON

logger = logging.getLogger("daskgen")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class Group:
    id: str
    name: str
    bundles: list[dict[str, float]]
    strategy: str
    detached: bool
    creator: str  # the client that created it: a non-detached group ends with it
    state: str = "PENDING"  # CREATED, RESCHEDULING, REMOVED
    where: list[str | None] = field(default_factory=list)  # the worker holding each bundle
    attempts: int = 0
    created: float = field(default_factory=time.monotonic)
    latency_ms: float = 0.0
    actors: set[str] = field(default_factory=set)

    def entry(self) -> dict[str, Any]:
        """Ray's ``placement_group_table`` entry (node ids are worker addresses, as
        ``get_runtime_context().get_node_id()`` reports them inside a task)."""
        return {
            "placement_group_id": self.id,
            "name": self.name,
            "bundles": {i: dict(b) for i, b in enumerate(self.bundles)},
            "bundles_to_node_id": {i: w for i, w in enumerate(self.where) if w is not None},
            "strategy": self.strategy,
            "state": self.state,
            "stats": {
                "end_to_end_creation_latency_ms": self.latency_ms,
                "scheduling_attempt": self.attempts,
                "scheduling_state": {"CREATED": "FINISHED", "REMOVED": "REMOVED"}.get(
                    self.state, "QUEUED"
                ),
            },
        }


def _fits(need: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(r, 0.0) >= amount - 1e-9 for r, amount in need.items() if amount)


def _take(need: dict[str, float], free: dict[str, float]) -> None:
    for r, amount in need.items():
        free[r] = free.get(r, 0.0) - amount


def plan(
    strategy: str,
    bundles: list[dict[str, float]],
    todo: list[int],
    fixed: dict[int, str],
    free: dict[str, dict[str, float]],
) -> dict[int, str] | None:
    """Where to book bundles ``todo`` (worker per index), the bundles ``fixed`` staying where
    they are, given each worker's ``free`` room; None if the strategy cannot be met now.

    STRICT_PACK: one worker for the whole group; PACK: one worker if any can hold them all,
    else as few as first-fit finds; STRICT_SPREAD: a distinct worker per bundle; SPREAD:
    distinct workers where possible. A worker is Dask's unit of placement (a task runs on
    one), so "node" in Ray's strategies is a worker here."""
    free = {w: dict(r) for w, r in free.items()}
    order = sorted(free)
    homes = sorted(set(fixed.values()))
    if strategy in ("PACK", "STRICT_PACK"):
        need: dict[str, float] = {}
        for i in todo:
            for r, amount in bundles[i].items():
                need[r] = need.get(r, 0.0) + amount
        candidates = homes[:1] if strategy == "STRICT_PACK" and homes else homes + order
        for worker in candidates:
            if worker in free and _fits(need, free[worker]):
                return dict.fromkeys(todo, worker)
        if strategy == "STRICT_PACK":
            return None
    counts: dict[str, int] = {}
    for worker in fixed.values():
        counts[worker] = counts.get(worker, 0) + 1
    chosen: dict[int, str] = {}
    for i in todo:
        able = [w for w in order if _fits(bundles[i], free[w])]
        if strategy == "STRICT_SPREAD":
            able = [w for w in able if not counts.get(w)]
        if not able:
            return None
        if strategy == "PACK":
            worker = min(able, key=lambda w: (-counts.get(w, 0), w))
        else:
            worker = min(able, key=lambda w: (counts.get(w, 0), w))
        _take(bundles[i], free[worker])
        counts[worker] = counts.get(worker, 0) + 1
        chosen[i] = worker
    return chosen


class PlacementGroups:
    """The placement-group table and the restrictions of the tasks in groups (see the
    module's docstring). ``able(worker)`` says whether a worker may run daskgen's tasks."""

    def __init__(self, scheduler: Any, able: Any, home: Any) -> None:
        self.scheduler = scheduler
        self.able = able
        self.home = home  # actor id -> the worker hosting it (None: not known)
        self.groups: dict[str, Group] = {}
        self.names: dict[str, str] = {}  # name -> group id
        self.keys: dict[Any, tuple[str, int]] = {}  # task not ended -> (group, bundle index)

    @property
    def routes(self) -> dict[str, Any]:
        """Request handlers (op -> handler), added by the plugin."""
        return {
            "daskgen_pg_create": self.create,
            "daskgen_pg_remove": self.remove,
            "daskgen_pg_table": self.table,
            "daskgen_pg_lookup": self.lookup,
            "daskgen_pg_bundle": self.bundle,
        }

    # -- requests -------------------------------------------------------------------------------

    def create(
        self,
        id: str,
        bundles: list[dict[str, float]],
        strategy: str,
        name: str,
        detached: bool,
        client: str,
    ) -> str | None:
        """Record a new group and try to book it; the reason it cannot exist, else None."""
        if name and name in self.names:
            return f"name {name!r} already exists"
        group = Group(id, name, [dict(b) for b in bundles], strategy, detached, client)
        group.where = [None] * len(bundles)
        self.groups[id] = group
        if name:
            self.names[name] = id
        self._place(group)
        return None

    def remove(self, id: str) -> dict[str, Any]:
        """Remove a group: its booking is freed and its tasks not running yet fail with
        ``TaskPlacementGroupRemoved``. Returns ``{"actors": {actor id: worker}}``, its actors
        and where they live (the client kills them), or ``{}`` for a group removed already or
        unknown."""
        group = self.groups.get(id)
        if group is None or group.state == "REMOVED":
            return {}
        group.state = "REMOVED"
        group.where = [None] * len(group.bundles)
        if group.name:
            self.names.pop(group.name, None)
        mine = [k for k, (g, _) in self.keys.items() if g == id]
        for key in mine:
            del self.keys[key]
        why = f"{PG_REMOVED_REASON}placement group {id} was removed"
        assigned: dict[str, list[Any]] = {}
        waiting = []
        for key in mine:
            worker = dx.scheduler_processing_on(self.scheduler, key)
            if worker is None:
                waiting.append(key)
            else:
                assigned.setdefault(worker, []).append(key)
        # Dask's forced cancel, for every client that wants them (fire-and-forget's too)
        dx.scheduler_cancel(self.scheduler, waiting, "fire-and-forget", why)
        for worker, keys in assigned.items():
            asyncio.ensure_future(self._cancel_unstarted(worker, keys, why))
        actors = {a: self.home(a) for a in sorted(group.actors)}
        self._retry_pending()
        return {"actors": actors}

    async def _cancel_unstarted(self, worker: str, keys: list[Any], why: str) -> None:
        """Cancel the tasks of ``keys`` that ``worker`` holds but has not started (those
        running go on to their end)."""
        try:
            started = await dx.scheduler_run_on_worker(
                self.scheduler, worker, dx.worker_started, keys
            )
        except Exception:  # the worker left: Dask places them again, and they are not ours
            logger.debug("daskgen: could not ask %s about %s", worker, keys, exc_info=True)
            started = [False] * len(keys)
        idle = [k for k, was in zip(keys, started, strict=True) if not was]
        dx.scheduler_cancel(self.scheduler, idle, "fire-and-forget", why)

    def table(self, id: str | None = None) -> dict[str, Any]:
        """``placement_group_table``: one group's entry, or every group's by id."""
        if id is not None:
            group = self.groups.get(id)
            return group.entry() if group is not None else {}
        return {gid: g.entry() for gid, g in self.groups.items()}

    def lookup(self, name: str) -> dict[str, Any] | None:
        """The live group named ``name``: its id, bundles and strategy."""
        group = self.groups.get(self.names.get(name, ""))
        if group is None:
            return None
        return {"id": group.id, "bundles": group.bundles, "strategy": group.strategy}

    def bundle(self, id: str, index: int) -> dict[str, Any]:
        """Where an actor of the group may be created: the group's state and the workers
        holding bundle ``index`` (every bundle's, for -1)."""
        group = self.groups.get(id)
        if group is None:
            return {"state": "REMOVED", "workers": []}
        return {"state": group.state, "workers": self._workers_for(group, index)}

    # -- hooks the plugin calls ------------------------------------------------------------------

    def update_graph(self, placements: dict[Any, Any], actors: dict[Any, Any]) -> None:
        """Tasks that arrived with :data:`PLACEMENT_ANNOTATION`: track and restrict them (an
        unknown or removed group's tasks fail at once)."""
        gone: list[Any] = []
        placed = []
        for key, where in placements.items():
            group = self.groups.get(where["group"])
            actor = actors.get(key)
            key = as_key(key)
            if group is None or group.state == "REMOVED":
                gone.append(key)
            elif actor is not None:
                # An actor's creation: its client pinned it to a worker of the bundle already
                # (its handle calls that worker); the group's removal kills it.
                group.actors.add(actor["actor"])
            else:
                self.keys[key] = (group.id, int(where["bundle"]))
                placed.append(key)
        self._restrict(placed)
        if gone:
            # After the graph's own transitions (this hook runs before them).
            why = f"{PG_REMOVED_REASON}its placement group was removed"
            cancel = dx.scheduler_cancel
            self.scheduler.loop.add_callback(cancel, self.scheduler, gone, "fire-and-forget", why)

    def ended(self, key: Any) -> None:
        """A task finished, erred or was forgotten."""
        self.keys.pop(key, None)

    def held(self, key: Any) -> bool:
        """Whether ``key``'s restrictions are this table's to set."""
        return key in self.keys

    def worker_joined(self) -> None:
        self._retry_pending()

    def worker_left(self, worker: str) -> None:
        """Book the bundles ``worker`` held elsewhere; meanwhile their tasks wait."""
        for group in self.groups.values():
            lost = [i for i, w in enumerate(group.where) if w == worker]
            if not lost:
                continue
            for i in lost:
                group.where[i] = None
            group.state = "RESCHEDULING"
            self._place(group, leaving=worker)
            if group.state != "CREATED":
                self._restrict([k for k, (g, _) in self.keys.items() if g == group.id])

    def client_left(self, client: str) -> None:
        """Remove the non-detached groups ``client`` created (they share its fate, as Ray's
        share their creator's; their actors end with the creator's handles)."""
        for group in list(self.groups.values()):
            if group.creator == client and not group.detached and group.state != "REMOVED":
                self.remove(group.id)

    def booked(self) -> dict[str, dict[str, float]]:
        """The resources booked on each worker by every group."""
        out: dict[str, dict[str, float]] = {}
        for group in self.groups.values():
            for i, worker in enumerate(group.where):
                if worker is not None:
                    _take({r: -a for r, a in group.bundles[i].items()}, out.setdefault(worker, {}))
        return out

    # -- booking ---------------------------------------------------------------------------------

    def _free(self, leaving: str | None = None) -> dict[str, dict[str, float]]:
        booked = self.booked()
        out: dict[str, dict[str, float]] = {}
        for w in dx.scheduler_worker_states(self.scheduler):
            if w["address"] == leaving or not self.able(w["address"]):
                continue
            room = {r: float(v) for r, v in w["resources"].items()}
            room.setdefault("CPU", float(w["nthreads"]))
            room.setdefault("memory", float(w["memory_limit"] or 0))
            _take(booked.get(w["address"], {}), room)
            out[w["address"]] = room
        return out

    def _place(self, group: Group, leaving: str | None = None) -> None:
        todo = [i for i, w in enumerate(group.where) if w is None]
        if not todo:
            return
        group.attempts += 1
        fixed = {i: w for i, w in enumerate(group.where) if w is not None}
        chosen = plan(group.strategy, group.bundles, todo, fixed, self._free(leaving))
        if chosen is None:
            return
        for i, worker in chosen.items():
            group.where[i] = worker
        if group.state == "PENDING":
            group.latency_ms = round((time.monotonic() - group.created) * 1000, 3)
        group.state = "CREATED"
        self._restrict([k for k, (g, _) in self.keys.items() if g == group.id])

    def _retry_pending(self) -> None:
        for group in list(self.groups.values()):
            if group.state in ("PENDING", "RESCHEDULING"):
                self._place(group)

    def _workers_for(self, group: Group, index: int) -> list[str]:
        if index == GATE_BUNDLE:
            return []
        if index >= 0:
            worker = group.where[index] if index < len(group.where) else None
            return [worker] if worker is not None else []
        return sorted({w for w in group.where if w is not None})

    def _restrict(self, keys: list[Any]) -> None:
        """Restrict ``keys`` to where their bundle is booked now (nowhere: they wait)."""
        by_place: dict[tuple[str, ...] | None, list[Any]] = {}
        for key in keys:
            gid, index = self.keys[key]
            group = self.groups[gid]
            place: tuple[str, ...] | None
            if index == GATE_BUNDLE:
                place = None if group.state == "CREATED" else ()
            else:
                place = tuple(self._workers_for(group, index))
            by_place.setdefault(place, []).append(key)
        for place, some in by_place.items():
            dx.scheduler_place(self.scheduler, some, None if place is None else list(place))
