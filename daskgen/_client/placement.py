"""Placement groups, the caller's half (in the driver, or a task): Ray's
``ray.util.placement_group`` API over daskgen's scheduler plugin (``_scheduler.placement``
books the bundles on workers and restricts the group's tasks to them).

``placement_group(bundles, strategy)`` asks the scheduler to book the group and returns at
once; ``pg.ready()`` is a ref (a tiny task that may run only once the group is booked) that
resolves to the group, ``pg.wait(timeout_seconds)`` waits on it. What is and is not
guaranteed on Dask is in ``docs/user-guide/placement-groups.md``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from .. import _runtime
from .._protocol import (
    GATE_BUNDLE,
    PG_CREATE_OP,
    PG_LOOKUP_OP,
    PG_REMOVE_OP,
    PG_TABLE_OP,
    new_token,
)
from ..exceptions import RaySystemError, TaskPlacementGroupRemoved
from .install import ensure_served

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_EXAMPLE = 'For example: `[{"CPU": 1.0}, {"GPU": 1.0}]`.'

# Set by the modules above this one (so that it imports neither): submit a remote function's
# call (``_client.remote_function``: ``ready()``'s task), and end an actor (``_client.actors``:
# the actors of a removed group).
submit_ready: Callable[[PlacementGroup, Any], Any] | None = None
end_actor: Callable[[Any, str, str | None, str], None] | None = None


class PlacementGroupID(str):
    """A placement group's id (a hex string), with Ray's ``hex()``."""

    def hex(self) -> str:  # type: ignore[override]
        return str(self)

    def is_nil(self) -> bool:
        return not self

    def __repr__(self) -> str:
        return f"PlacementGroupID({str(self)})"


class PlacementGroup:
    """A handle to a placement group (picklable; equal handles name the same group)."""

    def __init__(self, id: str, bundles: list[dict[str, float]], strategy: str = "PACK") -> None:
        self.id = PlacementGroupID(id)
        self.bundle_cache = [dict(b) for b in bundles]
        self.strategy = strategy
        self._ready: Any = None

    @staticmethod
    def empty() -> PlacementGroup:
        return PlacementGroup("", [])

    @property
    def is_empty(self) -> bool:
        return self.id.is_nil()

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The group's bundles, as resource dicts of floats."""
        return [dict(b) for b in self.bundle_cache]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_cache)

    def ready(self) -> Any:
        """A ref that resolves to this group once every bundle is booked (it never resolves
        while the group cannot be placed; it raises ``TaskPlacementGroupRemoved`` once the
        group is removed)."""
        if self._ready is None or self._ready._is_done():  # a done one may be out of date
            assert submit_ready is not None, "daskgen._client.remote_function is not imported"
            gate = PlacementGroupSchedulingStrategy(self, GATE_BUNDLE)
            gate._gate = True  # anywhere, once it is booked (never a user's index)
            self._ready = submit_ready(self, gate)
        return self._ready

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group is booked within ``timeout_seconds`` (False if it is not yet:
        it may still be, later). Raises if the group was removed."""
        from .api import get, wait

        if not isinstance(timeout_seconds, numbers.Real) or math.isnan(timeout_seconds):
            raise TypeError(f"timeout_seconds must be a number, not {timeout_seconds!r}")
        if placement_group_table(self).get("state", "REMOVED") == "REMOVED":
            raise ValueError(f"Placement group {self.id!r} does not exist.")
        done, _ = wait([self.ready()], timeout=max(float(timeout_seconds), 0.0))
        if not done:
            return False
        try:
            get(done[0])
        except TaskPlacementGroupRemoved:
            raise ValueError(f"Placement group {self.id!r} does not exist.") from None
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("PlacementGroup", str(self.id)))

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id!r}, bundles={self.bundle_cache}, {self.strategy})"

    def __reduce__(self) -> tuple[Any, ...]:
        return PlacementGroup, (str(self.id), self.bundle_cache, self.strategy)


def the_group(group: PlacementGroup) -> PlacementGroup:
    """What ``ready()``'s task returns (it runs only once the group is booked)."""
    return group


class PlacementGroupSchedulingStrategy:
    """Run a task or actor in bundle ``placement_group_bundle_index`` of ``placement_group``
    (-1: any of its bundles); with ``placement_group_capture_child_tasks``, the tasks it
    starts join the group too."""

    _daskgen_strategy = "placement_group"

    def __init__(
        self,
        placement_group: PlacementGroup | None,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks
        self._gate = False  # ready()'s own: see PlacementGroup.ready

    def __repr__(self) -> str:
        return (
            f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
            f"{self.placement_group_bundle_index}, {self.placement_group_capture_child_tasks})"
        )


def _client() -> Any:
    client = _runtime.client()
    ensure_served(client)
    return client


def _check_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, list):
        raise ValueError(f"Placement group bundles must be a list, got {type(bundles)}.")
    if not bundles:
        raise ValueError(
            f"Bundles must be a non-empty list of resource dictionaries. {_EXAMPLE} Got empty "
            "list instead."
        )
    out = []
    for bundle in bundles:
        ok = isinstance(bundle, dict) and all(
            isinstance(k, str) and isinstance(v, numbers.Real) and not isinstance(v, bool)
            for k, v in bundle.items()
        )
        if not ok:
            raise ValueError(
                f"Bundles must be a non-empty list of resource dictionaries. {_EXAMPLE}"
            )
        if any(v < 0 for v in bundle.values()):
            # Ray 2.60 takes these and its node manager then fails: refused here.
            raise ValueError(f"Bundle resources must be >= 0, not {bundle}. {_EXAMPLE}")
        if not any(v > 0 for v in bundle.values()):
            raise ValueError(
                "Bundles cannot be an empty dictionary or resources with only 0 values. "
                f"Bundles: {bundles}"
            )
        out.append({k: float(v) for k, v in bundle.items()})
    return out


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
    _max_cpu_fraction_per_node: float | None = None,
    _soft_target_node_id: str | None = None,
    bundle_label_selector: list[dict[str, str]] | None = None,
) -> PlacementGroup:
    """Book ``bundles`` (resource dicts) on workers that can hold them, per ``strategy``
    ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"), and return its handle at once (see
    ``ready()``/``wait()``). ``lifetime="detached"``: it outlives this client (else it is
    removed when this client leaves). The last three arguments are accepted and ignored."""
    checked = _check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(
            f"Invalid placement group strategy {strategy}. Supported strategies are: "
            f"{set(STRATEGIES)}."
        )
    if lifetime not in (None, "detached"):
        raise ValueError(
            "Placement group `lifetime` argument must be either `None` or 'detached'. "
            f"Got {lifetime}."
        )
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {name!r}")
    client = _client()
    group_id = new_token()
    refused = client.sync(
        getattr(client.scheduler, PG_CREATE_OP),
        id=group_id,
        bundles=checked,
        strategy=strategy,
        name=name,
        detached=lifetime == "detached",
        client=client.id,
    )
    if refused:
        raise RaySystemError(
            f"Failed to create placement group '{group_id}' because {refused} (remove it with "
            "remove_placement_group, or choose another name)."
        )
    return PlacementGroup(group_id, checked, strategy)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group: its tasks not started yet fail with ``TaskPlacementGroupRemoved``,
    its actors die (``ActorDiedError``); tasks already running go on to their end (Ray kills
    their worker process; a Dask worker's thread cannot be stopped without the others)."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(
            "remove_placement_group() needs a PlacementGroup (from placement_group()), not "
            f"{type(placement_group).__name__}"
        )
    client = _client()
    removed = client.sync(getattr(client.scheduler, PG_REMOVE_OP), id=str(placement_group.id))
    assert end_actor is not None, "daskgen._client.actors is not imported"
    for actor, worker in (removed.get("actors") or {}).items():
        end_actor(client, actor, worker, "its placement group was removed")


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """Ray's table: the group's state (``PENDING``, ``CREATED``, ``RESCHEDULING``,
    ``REMOVED``), bundles and the worker holding each (``bundles_to_node_id``); every group's
    by id when none is given."""
    client = _client()
    group_id = None if placement_group is None else str(placement_group.id)
    return dict(client.sync(getattr(client.scheduler, PG_TABLE_OP), id=group_id))


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group created with ``name=placement_group_name``."""
    client = _client()
    found = client.sync(getattr(client.scheduler, PG_LOOKUP_OP), name=placement_group_name)
    if found is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return PlacementGroup(found["id"], found["bundles"], found["strategy"])


def get_current_placement_group() -> PlacementGroup | None:
    """The group the running task was scheduled in (None in the driver, and in tasks outside
    any group)."""
    current = _runtime.current_placement.get()
    return None if current is None else current[0]
