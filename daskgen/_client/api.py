"""``get``, ``put``, ``wait`` and ``cancel``: Ray's object API over Dask futures (the checks of
what the caller passed; ``_objects.resolve`` does the waiting and fetching)."""

from __future__ import annotations

from typing import Any

from .. import _dask_internals as dx
from .. import _runtime
from .._objects.generators import ObjectRefGenerator
from .._objects.refs import ObjectRef
from .._objects.resolve import get_values, wait_ready
from .._options import check_timeout
from .._protocol import Put, put_key
from . import fetch as _fetch  # noqa: F401 (get's direct fetches: resolve.fetch_direct)
from .actor_channel import cancel_actor_call
from .cancel import cancel_generator, cancel_keys
from .install import ensure_served


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
    ``WorkerCrashedError``. Inside a task, the wait frees the task's thread and CPU. A
    streaming generator is returned as it is, as in Ray.
    """
    timeout = check_timeout(timeout)
    if isinstance(object_refs, ObjectRefGenerator):
        return object_refs  # as Ray: the generator is its own value
    refs, single = _as_ref_list(object_refs, "get")
    client = _runtime.client()  # initialises on first use, as Ray's get does, even for []
    out = get_values(client, refs, timeout)
    return out[0] if single else out


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the cluster once and return a ref to it (pass it to many tasks)."""
    if isinstance(value, ObjectRef):
        raise TypeError(
            "Calling 'put' on an ObjectRef is not allowed. If you really want to do this, you "
            "can wrap the ObjectRef in a list and call 'put' on it."
        )
    client = _runtime.client()
    ensure_served(client)
    key = put_key()
    futures = client.scatter({key: Put(value)}, hash=False)
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
    client = _runtime.client()  # initialises on first use, as Ray's wait does, even for []
    if object_refs:
        wait_ready(client, object_refs, num_returns, timeout)
    ready = [r for r in object_refs if r._is_ready()][:num_returns]
    chosen = set(map(id, ready))
    return ready, [r for r in object_refs if id(r) not in chosen]


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
    if isinstance(ref, ObjectRefGenerator):
        cancel_generator(ref._state, force, recursive)
        return
    if not isinstance(ref, ObjectRef):
        raise TypeError(
            f"ray.cancel() only supported for object refs. For actors, try ray.kill(). "
            f"Got: {type(ref).__name__}."
        )
    if cancel_actor_call(ref.key, force):
        return
    if ref._future.status == "finished":
        return
    state = getattr(ref._owner, "state", None)
    if state is not None:
        cancel_generator(state, force, recursive)  # a yield of a generator: its generator
        return
    cancel_keys(_runtime.client(), [ref.key], force=force, recursive=recursive)
