"""What ``get`` and ``wait`` do once their arguments are checked (in any process: the driver, or
a task that gets values): wait for refs with one O(n) waiter, then take each value from where
it is cheapest, and turn what Dask stored into what the user sees.

Where a value comes from, cheapest first: inline (it came with its announcement or the task's
result), over the embedded cluster's fast lane (large values, ``_cluster.fastlane``), straight
from the worker holding it over the wire (large yields elsewhere, ``_client.fetch``), or Dask's
gather.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from distributed import Client, Future

from .. import _dask_internals as dx
from .._cluster.fastlane import fetch_large
from .._protocol import ErrorValue, GenOutcome, Put
from .._waiting import blocking
from .._waiting import sync as interruptible_sync
from ..exceptions import GetTimeoutError, TaskCancelledError, fresh, translate
from . import promotion
from . import refs as _refs
from .generators import outcome_value
from .refs import ObjectRef

# Set by the client layer (``_client.fetch``): the values of those of the given keys it can take
# straight from the workers holding them, by key (the others are left out).
fetch_direct: Callable[[Client, list[Any]], dict[Any, Any]] | None = None

gathered = 0  # values this process's get took by Dask's gather, none of the ways above (tests)


def get_values(client: Client, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
    """The values of ``refs``, waiting up to ``timeout`` s (see ``daskgen.get``)."""
    out: list[Any] = [None] * len(refs)
    remote = _take_inline(refs, range(len(refs)), out)
    if not remote:
        return out
    with blocking():
        if _wait_direct(refs, remote, timeout):
            remote = _take_inline(refs, remote, out)
            if not remote:
                return out
        else:
            raise GetTimeoutError(
                f"Get timed out after {timeout} s: {len(remote)} value(s) not ready."
            )
        pending = [refs[i] for i in remote]
        failed = next((r for r in pending if failed_future(r._future)), None)
        if failed is None and not all(r._is_done() for r in pending):
            if timeout == 0:
                left = sum(not r._is_done() for r in pending)
                raise GetTimeoutError(f"Get timed out: {left} of {len(refs)} not ready.")
            waiting = [r for r in pending if not r._is_done()]
            failed, left = interruptible_sync(
                client, await_ready, waiting, len(waiting), timeout, True
            )
            if left and failed is None:
                raise GetTimeoutError(
                    f"Get timed out after {timeout} s: {left} value(s) not ready."
                )
        if failed is not None:
            raise_failed(failed)
        remote = _take_inline(refs, remote, out)  # small results arrive with completion
        # large values: over the embedded cluster's lane, else straight from the worker
        # holding them (``_client.fetch``); Dask's gather fetches the rest
        fetched = fetch_large(client, [refs[i].key for i in remote])
        if fetch_direct is not None and len(fetched) < len(remote):
            unfetched = [refs[i].key for i in remote if refs[i].key not in fetched]
            fetched.update(fetch_direct(client, unfetched))
        rest = []
        for i in remote:
            if refs[i].key in fetched:
                out[i] = unwrap(fetched[refs[i].key])
            else:
                rest.append(i)
        futures = [refs[i]._future for i in rest]
        global gathered
        gathered += len(futures)
        try:
            values = client.gather(futures) if len(futures) > 1 else [f.result() for f in futures]
        except BaseException as exc:
            raise fresh(translate(exc)) from None
    for i, value in zip(rest, values, strict=True):
        out[i] = unwrap(value)
    return out


def _wait_direct(refs: list[ObjectRef], indices: list[int], timeout: float | None) -> bool:
    """Refs that are all direct actor calls on one connection: wait in this thread for their
    results, which the connection's reader hands over without a turn of the client's loop.
    False if ``timeout`` s passed; True otherwise (also when this does not apply)."""
    owner = promotion.owner_of(refs[indices[0]].key)
    wait_settled = getattr(owner, "wait_settled", None)
    if wait_settled is None or timeout == 0:
        return True
    keys = [refs[i].key for i in indices]
    if any(promotion.owner_of(key) is not owner for key in keys):
        return True
    return bool(wait_settled(keys, timeout))


def _get_one(ref: ObjectRef) -> Any:
    return get_values(ref._future.client, [ref], None)[0]


_refs.resolve_value = _get_one  # ObjectRef.future() (see refs.resolve_value)


def wait_ready(client: Client, items: list[Any], need: int, timeout: float | None) -> None:
    """Return once ``need`` of ``items`` (refs, streaming generators) are ready, or after
    ``timeout`` s (see ``daskgen.wait``)."""
    have = sum(item._is_ready() for item in items)
    if have >= need or timeout == 0:
        return
    waiting = [item for item in items if not item._is_ready()]
    with blocking():
        interruptible_sync(client, await_ready, waiting, need - have, timeout, False)


async def await_ready(
    items: Sequence[Any], need: int, timeout: float | None, fail_fast: bool
) -> tuple[ObjectRef | None, int]:
    """On the client's loop: return once ``need`` of ``items`` are ready, or one has failed
    (``fail_fast``), or ``timeout`` s passed. Returns (the first failed ref, how many of
    ``need`` are still not ready).

    O(n): each item gets one small waiter that counts itself when ready; ``asyncio.wait`` over
    all of them at every completion would be quadratic in the number of items.
    """
    finished = asyncio.Event()
    state: dict[str, Any] = {"ready": 0, "failed": None}

    async def one(item: Any) -> None:
        await item._wait_ready()
        state["ready"] += 1
        future = getattr(item, "_future", None)
        if fail_fast and future is not None and failed_ref(item):
            state["failed"] = state["failed"] or item
            finished.set()
        if state["ready"] >= need:
            finished.set()

    waiters = [asyncio.ensure_future(one(item)) for item in items]
    try:
        try:
            await asyncio.wait_for(finished.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return state["failed"], max(0, need - state["ready"])
    finally:
        for waiter in waiters:
            waiter.cancel()


def _take_inline(refs: list[ObjectRef], indices: Sequence[int], out: list[Any]) -> list[int]:
    """Fill ``out`` with the values that came inline; return the indices still to fetch."""
    remote = []
    for i in indices:
        blob = refs[i]._inline_blob()
        # A yield lost with its worker waits for the re-run's value, not its old copy.
        if blob is None or refs[i]._future.status == "lost":
            remote.append(i)
        else:
            out[i] = unwrap(pickle.loads(blob))  # no round trip
    return remote


def unwrap(value: Any) -> Any:
    """Turn what Dask stored under a key into what the user sees (an error value raises)."""
    cls = type(value)
    if cls is ErrorValue:
        raise value.error
    if cls is GenOutcome:
        return outcome_value(value)
    if cls is Put:
        return value.value
    return value


def failed_future(future: Future) -> bool:
    """Erred, cancelled, or holding an error value (which Dask reports as a normal result)."""
    status = future.status
    return status in ("error", "cancelled") or (status == "finished" and future.type is ErrorValue)


def failed_ref(ref: ObjectRef) -> bool:
    """Whether the ready ``ref`` failed: its future did (:func:`failed_future`), or its small
    result came inline as an error value (a direct call's, or an actor call's: their futures
    finish only with the task's own report, or with no type)."""
    if failed_future(ref._future):
        return True
    blob = ref._inline_blob()
    # The class's name opens the pickle of an ErrorValue: only those are unpickled here.
    return (
        blob is not None
        and blob.find(b"ErrorValue", 0, 64) >= 0
        and type(pickle.loads(blob)) is ErrorValue
    )


def raise_failed(ref: ObjectRef) -> None:
    """Raise what the failed ``ref`` (see :func:`failed_ref`) raises."""
    blob = ref._inline_blob()
    if blob is not None and not failed_future(ref._future):
        unwrap(pickle.loads(blob))  # raises, as ``_take_inline`` would
    raise_failure(ref._future)


def raise_failure(future: Future) -> None:
    """Raise what a failed ref raises (a fresh copy: see ``exceptions.fresh``)."""
    if future.status in ("error", "cancelled"):
        raise fresh(translate(dx.future_exception(future) or TaskCancelledError())) from None
    try:
        value = future.result()
    except BaseException as exc:
        raise fresh(translate(exc)) from None
    unwrap(value)
