"""Ray's ``ray.util`` names: a pool of actors, results as they complete, a bounded map, named
actors, placement groups (``daskgen.util.placement_group``), scheduling strategies
(``daskgen.util.scheduling_strategies``) and (``daskgen.util.queue``) a queue tasks and actors
share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .._client.actors import list_named_actors
from .._client.api import get, wait
from . import queue, scheduling_strategies
from .actor_pool import ActorPool
from .placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "ActorPool",
    "PlacementGroup",
    "as_completed",
    "get_current_placement_group",
    "get_placement_group",
    "list_named_actors",
    "map_unordered",
    "placement_group",
    "placement_group_table",
    "queue",
    "remove_placement_group",
    "scheduling_strategies",
]


def as_completed(
    refs: Sequence[Any], *, chunk_size: int = 10, yield_obj_refs: bool = False, **kwargs: Any
) -> Iterator[Any]:
    """Yield the values of ``refs`` (or the refs, with ``yield_obj_refs``) as they become
    ready, ``chunk_size`` at a time (``wait``'s ``num_returns``; ``kwargs`` go to ``wait``):
    not in submission order, unlike ``get(refs)``, which waits for all of them."""
    _check_chunk_size(chunk_size)
    pending = list(refs)
    while pending:
        ready, pending = wait(pending, num_returns=min(chunk_size, len(pending)), **kwargs)
        yield from ready if yield_obj_refs else get(ready)


def map_unordered(
    fn: Any,
    items: Iterable[Any],
    *,
    backpressure_size: int | None = 100,
    chunk_size: int = 10,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """``fn.remote(item)`` for each of ``items``, with at most ``backpressure_size`` calls
    pending at once (None: no bound), and their values (or refs) as they complete,
    ``chunk_size`` at a time (``kwargs`` go to ``wait``)."""
    _check_chunk_size(chunk_size)
    if backpressure_size is not None and backpressure_size < 1:
        raise ValueError(f"backpressure_size must be at least 1 (or None), not {backpressure_size}")
    pending: list[Any] = []
    for item in items:
        if backpressure_size is not None and len(pending) >= backpressure_size:
            ready, pending = wait(pending, num_returns=min(chunk_size, len(pending)), **kwargs)
            yield from ready if yield_obj_refs else get(ready)
        pending.append(fn.remote(item))
    yield from as_completed(pending, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs, **kwargs)


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, not {chunk_size!r}")
