"""``get``, ``put``, ``wait`` and ``cancel``: Ray's object API over Dask futures."""

from __future__ import annotations

import asyncio
import copy
import math
import pickle
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from distributed import Client, Future, rejoin, secede
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from . import _dask_internals as dx
from ._actor_channel import cancel_actor_call
from ._cancel import cancel_keys
from ._fastlane import fetch_large
from ._interrupt import current_task_cancelled
from ._interrupt import sync as interruptible_sync
from ._lifecycle import get_client, in_worker_task
from ._protocol import ErrorValue, GenOutcome, put_key
from ._refs import ObjectRef
from .exceptions import (
    GetTimeoutError,
    RaySystemError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

# Dask's reason for cancelling every future when its client loses the scheduler.
SCHEDULER_LOST = "scheduler-connection-lost"

_thread = threading.local()


def check_timeout(timeout: Any, name: str = "timeout") -> float | None:
    """``None`` or a number of seconds >= 0; anything else is the caller's mistake."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be None or a number of seconds, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{name} must be >= 0, not {timeout!r}")
    return float(timeout)


@contextmanager
def blocking() -> Iterator[None]:
    """Around a wait inside a task: leave the worker's thread pool and lend back its resources.

    Without this, tasks blocked on other tasks hold every thread and CPU and the worker deadlocks
    (Ray also releases a task's CPU while it waits in ``get``). No-op outside tasks.
    """
    worker = in_worker_task()
    key = dx.worker_current_key(worker) if worker is not None else None
    if key is None or getattr(_thread, "seceded", False):
        yield
        return
    assert worker is not None
    worker.loop.add_callback(dx.worker_lend_resources, worker, key, +1)
    secede()
    _thread.seceded = True
    try:
        yield
    finally:
        _thread.seceded = False
        # A task cancel() interrupted is on its way out: it ends outside the pool (as Dask
        # lets a seceded task do) rather than wait for a thread its own children may hold.
        if not current_task_cancelled():
            rejoin()
        worker.loop.add_callback(dx.worker_lend_resources, worker, key, -1)


def _as_ref_list(object_refs: Any, what: str) -> tuple[list[ObjectRef], bool]:
    if isinstance(object_refs, ObjectRef):
        return [object_refs], True
    if not isinstance(object_refs, list):
        raise TypeError(
            f"Invalid type of object refs, {type(object_refs).__name__}, is given. "
            f"'object_refs' must either be an ObjectRef or a list of ObjectRefs (in {what}())."
        )
    for ref in object_refs:
        if not isinstance(ref, ObjectRef):
            raise TypeError(
                f"Attempting to call `{what}` on the value {ref!r}, which is not an ObjectRef."
            )
    return object_refs, False


def get(object_refs: ObjectRef | list[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value of a ref, or the list of values of a list of refs, blocking until ready.

    ``timeout`` seconds (``0`` checks once, ``None`` waits forever): past it raises
    ``GetTimeoutError`` (also a ``TimeoutError``). On a list, the first error to arrive raises at
    once, without waiting for the others. A failed task raises ``RayTaskError(Cause)``; a
    cancelled one ``TaskCancelledError``; one whose worker died past its retries
    ``WorkerCrashedError``. Inside a task, the wait frees the task's thread and CPU.
    """
    timeout = check_timeout(timeout)
    from ._generators import ObjectRefGenerator

    if isinstance(object_refs, ObjectRefGenerator):
        return object_refs  # as Ray: the generator is its own value
    refs, single = _as_ref_list(object_refs, "get")
    client = get_client()  # initialises on first use, as Ray's get does, even for []
    out: list[Any] = [None] * len(refs)
    remote = _take_inline(refs, range(len(refs)), out)
    if remote:
        with blocking():
            failed = _wait_refs(client, [refs[i] for i in remote], timeout, stop_on_error=True)
            if failed is not None:
                _raise_from_future(failed)
            remote = _take_inline(refs, remote, out)  # small results arrive with completion
            # large values, over the embedded cluster's lane; Dask's gather fetches the rest
            fetched = fetch_large(client, [refs[i].key for i in remote])
            rest = []
            for i in remote:
                if refs[i].key in fetched:
                    out[i] = unwrap(fetched[refs[i].key])
                else:
                    rest.append(i)
            remote = rest
            futures = [refs[i]._future for i in remote]
            try:
                values = (
                    client.gather(futures) if len(futures) > 1 else [f.result() for f in futures]
                )
            except BaseException as exc:
                raise _fresh(_translate(exc)) from None
        for i, value in zip(remote, values, strict=True):
            out[i] = unwrap(value)
    return out[0] if single else out


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
    """Turn what Dask stored under a key into what the user sees."""
    cls = type(value)
    if cls is ErrorValue:
        raise value.error
    if cls is GenOutcome:
        from ._generators import outcome_value

        return outcome_value(value)
    if cls is _Put:
        return value.value
    return value


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, RayTaskError):
        return exc
    if isinstance(exc, FutureCancelledError) and exc.reason == SCHEDULER_LOST:
        return RaySystemError(
            f"Lost the connection to the Dask scheduler, so the value of {exc.key} cannot be "
            f"had: {exc.msg or exc.reason}"
        )
    if isinstance(exc, (FutureCancelledError, asyncio.CancelledError)):
        return TaskCancelledError()  # as Ray says of a task cancelled before it ran
    if isinstance(exc, KilledWorker):
        return WorkerCrashedError(
            f"The worker running the task died and its retries ran out: {exc}"
        )
    return exc


def _failed(future: Future) -> bool:
    """Erred, cancelled, or holding an error value (which Dask reports as a normal result)."""
    status = future.status
    return status in ("error", "cancelled") or (status == "finished" and future.type is ErrorValue)


def _raise_from_future(future: Future) -> None:
    if future.status in ("error", "cancelled"):
        # Never the exception object Dask keeps in the future's state: raising it would hang
        # this frame (and the future) on its traceback, and so keep the key for ever.
        raise _fresh(_translate(dx.future_exception(future) or TaskCancelledError())) from None
    try:
        value = future.result()
    except BaseException as exc:
        raise _fresh(_translate(exc)) from None
    unwrap(value)


def _fresh(exc: BaseException) -> BaseException:
    """A new copy of ``exc`` to raise (each ``get`` raises its own, as Ray's does)."""
    if isinstance(exc, RayTaskError):
        return exc.as_instanceof_cause()
    try:
        copied = copy.copy(exc)
    except Exception:
        return exc
    copied.__traceback__ = None
    return copied


def _wait_refs(
    client: Client, refs: Sequence[ObjectRef], timeout: float | None, stop_on_error: bool
) -> Future | None:
    """Block until every ref is done; return the future of the first failed one if asked."""
    if stop_on_error:
        for ref in refs:
            if _failed(ref._future):
                return ref._future
    pending = [ref for ref in refs if not ref._is_done()]
    if not pending:
        return None
    if timeout == 0:
        raise GetTimeoutError(f"Get timed out: {len(pending)} of {len(refs)} not ready.")
    return interruptible_sync(client, _await_refs, pending, timeout, stop_on_error)


async def _await_refs(
    pending: list[ObjectRef], timeout: float | None, stop_on_error: bool
) -> Future | None:
    """On the client's loop: wait until every ref is done (or one failed), in O(n).

    Each ref gets one small waiter that counts itself when done; ``asyncio.wait`` over all of
    them at every completion would be quadratic in the number of refs.
    """
    finished = asyncio.Event()
    state: dict[str, Any] = {"left": len(pending), "failed": None}

    async def one(ref: ObjectRef) -> None:
        await ref._wait_done()
        if stop_on_error and _failed(ref._future) and state["failed"] is None:
            state["failed"] = ref._future
            finished.set()
        state["left"] -= 1
        if state["left"] == 0:
            finished.set()

    waiters = [asyncio.ensure_future(one(ref)) for ref in pending]
    try:
        try:
            await asyncio.wait_for(finished.wait(), timeout)
        except asyncio.TimeoutError:
            raise GetTimeoutError(
                f"Get timed out after {timeout} s: {state['left']} value(s) not ready."
            ) from None
        return state["failed"]
    finally:
        for w in waiters:
            w.cancel()


class _Put:
    """Box for ``put`` values: since dask 2026.7, scatter unpacks bare builtin containers."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return _Put, (self.value,)


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the cluster once and return a ref to it (pass it to many tasks)."""
    if isinstance(value, ObjectRef):
        raise TypeError(
            "Calling 'put' on an ObjectRef is not allowed. If you really want to do this, you "
            "can wrap the ObjectRef in a list and call 'put' on it."
        )
    client = get_client()
    key = put_key()
    futures = client.scatter({key: _Put(value)}, hash=False)
    return ObjectRef(dx.lighten(futures[key]))


def wait(
    object_refs: list[Any],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[Any], list[Any]]:
    """Split refs (and streaming generators) into ``(ready, not_ready)``, input order kept.

    Returns once ``num_returns`` are ready or ``timeout`` seconds passed. A generator is ready
    when its next ref exists or it is exhausted. ``fetch_local`` is accepted for Ray
    compatibility; values stay in the cluster until ``get``.
    """
    from ._generators import ObjectRefGenerator

    if isinstance(object_refs, (ObjectRef, ObjectRefGenerator)) or not isinstance(
        object_refs, list
    ):
        raise TypeError(
            f"wait() expected a list of ObjectRef or ObjectRefGenerator, got "
            f"{type(object_refs).__name__}"
        )
    for ref in object_refs:
        if not isinstance(ref, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(
                f"wait() expected a list of ObjectRef or ObjectRefGenerator, got list containing "
                f"{type(ref).__name__}"
            )
    if len(set(map(id, object_refs))) != len(object_refs) or len(set(object_refs)) != len(
        object_refs
    ):
        raise ValueError("Wait requires a list of unique object refs.")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an int, not {num_returns!r}")
    if num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    if object_refs and num_returns > len(object_refs):
        raise ValueError(
            f"num_returns ({num_returns}) cannot be greater than the number of objects provided "
            f"({len(object_refs)})"
        )
    timeout = check_timeout(timeout)
    if not isinstance(fetch_local, bool):
        raise TypeError(f"fetch_local must be a bool, not {fetch_local!r}")
    client = get_client()  # initialises on first use, as Ray's wait does, even for []
    if object_refs:
        with blocking():
            _wait_ready(client, object_refs, num_returns, timeout)
    ready = [r for r in object_refs if _is_ready(r)][:num_returns]
    chosen = set(map(id, ready))
    return ready, [r for r in object_refs if id(r) not in chosen]


def _is_ready(item: Any) -> bool:
    if isinstance(item, ObjectRef):
        return item._is_done()
    return item._is_ready()


def _wait_ready(client: Client, items: list[Any], need: int, timeout: float | None) -> None:
    if sum(map(_is_ready, items)) >= need or timeout == 0:
        return

    async def _one(item: Any) -> None:
        if isinstance(item, ObjectRef):
            await item._wait_done()
        else:
            await item._wait_ready()

    async def _all() -> None:
        waiters = [asyncio.ensure_future(_one(i)) for i in items if not _is_ready(i)]
        have = len(items) - len(waiters)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while have < need and waiters:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, rest = await asyncio.wait(
                    waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    return
                have += len(done)
                waiters = list(rest)
        finally:
            for w in waiters:
                w.cancel()

    interruptible_sync(client, _all)


def cancel(ref: Any, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the call behind ``ref`` (or a streaming generator's producer), as Ray does.

    A call not started yet never runs (``get`` raises ``TaskCancelledError``). A running task
    gets ``KeyboardInterrupt`` in its thread and fails with ``RayTaskError(TaskCancelledError)``
    (if it catches it and returns, its value stands); ``force=True`` stops it even if it sleeps
    or ignores that, freeing its worker slot at once, without ending the worker process.
    ``recursive`` also cancels the tasks it submitted. An async actor method gets
    ``asyncio.CancelledError``; a running threaded actor method is not interrupted, and
    ``force=True`` on an actor call raises ``ValueError``. A value already computed is left
    alone. Returns at once (see ``docs/user-guide/call-semantics.md``).
    """
    from ._generators import ObjectRefGenerator

    if isinstance(ref, ObjectRefGenerator):
        ref._state.cancel_task(force, recursive)
        return
    if isinstance(ref, ObjectRef) and cancel_actor_call(ref.key, force):
        return
    if not isinstance(ref, ObjectRef):
        raise TypeError(
            f"ray.cancel() only supported for object refs. For actors, try ray.kill(). "
            f"Got: {type(ref).__name__}."
        )
    if ref._future.status == "finished":
        return
    state = getattr(ref._owner, "state", None)
    if state is not None:
        state.cancel_task(force, recursive)  # a yield of a generator: cancel the generator
        return
    cancel_keys(get_client(), [ref.key], force=force, recursive=recursive)
