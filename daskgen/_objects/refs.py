"""``ObjectRef``: a Ray-style reference to one value in the cluster, backed by a Dask ``Future``.

Ownership follows Dask's reference counting: while any ``ObjectRef`` (or generator holding one)
for a key is alive in a process, that process's client keeps the key in the cluster.

Refs travel inside task arguments as refs (Ray's semantics; Dask would resolve a future nested in
a list, and leave one inside an object unbound, dask/distributed #4842). ``.remote()`` pickles the
arguments itself and records every ref it meets (:func:`capture_refs`), keeping them alive until
the call's own ref is dropped: the caller "lends" them to the task, as Ray's borrowing does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Any

from distributed import Client, Future

from .. import _dask_internals as dx
from .. import _runtime
from .._protocol import DESIRE_OP, Key, as_key, key_name
from ..exceptions import ObjectLostError, TaskCancelledError, WorkerCrashedError
from . import promotion

_capture = threading.local()


class InlineValue:
    """A small yielded value, pickled, as it arrived with the yield's announcement.

    Shared by the generator state and the refs of one yield, so that a yield later replaced by
    an error (surplus yields, a shorter re-run) changes for every holder at once.
    """

    __slots__ = ("blob", "waiters", "__weakref__")

    def __init__(self, blob: bytes | None = None) -> None:
        self.blob = blob
        # Loop futures of callers blocked on this value (see ObjectRef._wait_done).
        self.waiters: list[asyncio.Future[None]] | None = None

    def arrive(self, blob: bytes) -> None:
        """Store the value and wake whoever waits for it (on the client's loop)."""
        self.blob = blob
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)


class ObjectRef:
    """A reference to a value in the cluster: pass it to tasks, ``get`` it, ``await`` it.

    Hashable and comparable by key. ``hex()`` gives a stable id string.
    """

    __slots__ = ("_future", "_owner", "_inline", "__weakref__")

    def __init__(
        self, future: Future, owner: Any = None, inline: InlineValue | None = None
    ) -> None:
        self._future = future
        # Something that must live as long as this ref: the claim on the generator call that
        # produces it (``genstate.GenClaim``).
        self._owner = owner
        self._inline = inline

    def _inline_blob(self) -> bytes | None:
        """The pickled value when it came inline with its yield (no round trip needed)."""
        cell = self._inline
        return cell.blob if cell is not None else None

    def _is_done(self) -> bool:
        """Whether ``get`` would return (or raise) without waiting.

        A small result that came inline counts, though Dask's report that the task finished is
        still on its way: the value is final once the task returned it. A ``num_returns=N``
        ref of a generator with ``retry_exceptions`` waits for the generator task to end, as in
        Ray: until then a retry may still turn a published value into an error (a re-run that
        yields fewer values).
        """
        generator_task = self._static_generator_task()
        if generator_task is not None and not generator_task.done():
            return False
        status = self._future.status
        if status != "pending" and status != "lost":
            return True
        return status == "pending" and self._inline_blob() is not None

    def _static_generator_task(self) -> Future | None:
        """The task of the retrying ``num_returns=N`` generator this ref is a yield of (None
        otherwise; also None before the task is submitted, when nothing can be waited for)."""
        state = getattr(self._owner, "state", None)  # a generator call's GenClaim
        if not getattr(state, "settle_at_end", False):
            return None
        return getattr(state, "task", None)

    async def _wait_done(self) -> None:
        """On the client's loop: return once :meth:`_is_done` (inline value or Dask's report)."""
        generator_task = self._static_generator_task()
        if generator_task is not None:
            await dx.future_wait(generator_task)
        cell = self._inline
        if cell is None:
            await dx.future_wait(self._future)
            return
        if self._is_done():
            return
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        cell.waiters = [*(cell.waiters or ()), arrived]
        finished = asyncio.ensure_future(dx.future_wait(self._future))

        def _finished(_: object) -> None:
            if not arrived.done():
                arrived.set_result(None)

        finished.add_done_callback(_finished)
        try:
            await arrived
        finally:
            finished.cancel()
            if cell.waiters and arrived in cell.waiters:
                cell.waiters.remove(arrived)

    # What ``get``'s and ``wait``'s waiter asks of every item (streaming generators too).
    def _is_ready(self) -> bool:
        return self._is_done()

    async def _wait_ready(self) -> None:
        await self._wait_done()

    @property
    def key(self) -> Key:
        """The Dask key of the value (what the dashboard shows)."""
        return self._future.key

    def hex(self) -> str:
        """A stable hex id of the value (not the Dask key, so it can never collide with one)."""
        key = self.key
        if isinstance(key, tuple):
            token = str(key[0]).rpartition("-")[2]
            return f"{token}{int(key[1]):08x}"
        return str(key).rpartition("-")[2]

    def task_name(self) -> str:
        """The name of the function (or actor method) that produces this value."""
        return key_name(self.key)

    def future(self) -> concurrent.futures.Future:
        """A ``concurrent.futures.Future`` that resolves to the value (or its error)."""
        out: concurrent.futures.Future = concurrent.futures.Future()

        def _resolve(_: Any) -> None:
            try:
                out.set_result(resolve_value(self))
            except BaseException as exc:  # delivered to whoever waits on `out`
                out.set_exception(exc)

        self._future.add_done_callback(_resolve)
        return out

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self.future()).__await__()

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.key == self.key

    def __repr__(self) -> str:
        return f"ObjectRef({self.task_name()}, {self.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        client = self._future.client
        if client is not None:
            flush_submissions(client)  # its task may still wait to be sent (``_client.direct``)
        refs = getattr(_capture, "refs", None)
        if refs is not None:
            refs.append(self)  # .remote() promotes what it captured before it submits
        else:
            # Leaving this process some other way (put, a pickled object): a direct actor
            # call's result must be a real key before anyone else can take it.
            promotion.promote_now(self.key, self._future.client)
        return _rebuild_ref, (self.key,)


def _nothing_waits(client: Any) -> None:
    pass


# Set by the client layer (``_client.batching.flush``): send the calls of ``client`` that wait
# to be sent, before a ref to one of them leaves this process.
flush_submissions: Callable[[Any], None] = _nothing_waits


# ``get``'s own implementation (``_objects.resolve``) builds the values refs point to, which can
# hold refs themselves, so this module cannot import it: it registers itself here instead.
def _not_registered(ref: ObjectRef) -> Any:
    raise RuntimeError("daskgen._objects.resolve is not imported")


resolve_value: Callable[[ObjectRef], Any] = _not_registered


class capture_refs:
    """Within this block, collect every ``ObjectRef`` that gets pickled (in this thread)."""

    def __enter__(self) -> list[ObjectRef]:
        self._outer = getattr(_capture, "refs", None)
        _capture.refs = []
        return _capture.refs

    def __exit__(self, *exc: object) -> None:
        _capture.refs = self._outer


def lend(ref: ObjectRef) -> bool:
    """Record ``ref`` among the refs the call whose arguments are being pickled in this thread
    keeps alive until it has run (see :class:`capture_refs`); False outside such pickling."""
    refs = getattr(_capture, "refs", None)
    if refs is None:
        return False
    refs.append(ref)
    return True


# Inline results expected by this process, by task key (see _executor._send_inline_result).
_result_cells: weakref.WeakValueDictionary[Key, InlineValue] = weakref.WeakValueDictionary()


def result_ref(future: Future) -> ObjectRef:
    """The ref of a plain task's result, ready to receive the result inline if it is small."""
    cell = _result_cells[future.key] = InlineValue()
    return ObjectRef(future, inline=cell)


def on_result_message(key: Key, blob: bytes, **_: Any) -> None:
    """The client's handler for ``daskgen-result`` (on its event loop)."""
    cell = _result_cells.get(as_key(key))
    if cell is not None:
        cell.arrive(blob)


def early_result(key: Key, blob: bytes) -> bool:
    """A direct call's small result, read by the actor wire's thread: ``get`` may take it at
    once; ``deliver_result`` follows on the client's loop. False if nobody holds the ref."""
    cell = _result_cells.get(key)
    if cell is None:
        return False
    cell.blob = blob
    return True


def has_result(key: Key) -> bool:
    """Whether the small result of ``key`` is here already."""
    cell = _result_cells.get(key)
    return cell is not None and cell.blob is not None


def deliver_result(client: Client, key: Key, blob: bytes | None, finish: bool = True) -> None:
    """A result that came on its own (a direct actor call's): the value, if it came inline,
    and (``finish``) the ref's future marked finished (on the client's loop)."""
    cell = _result_cells.get(key)
    if cell is not None and blob is not None:
        cell.arrive(blob)
    if finish:
        dx.key_finish(client, key)


def on_lost_message(client: Client) -> Any:
    """The client's handler for ``daskgen-lost``: refs this process took to keys that will
    never exist fail, instead of waiting for ever (on the client's loop)."""
    kinds = {"lost": ObjectLostError, "failed": WorkerCrashedError}

    def handler(keys: list[Key], kind: str, why: str, **_: Any) -> None:
        for key in map(as_key, keys):
            if kind == "cancelled":
                error: BaseException = TaskCancelledError(
                    None, f"The value {key!r} will never exist: {why}."
                )
            else:
                error = kinds.get(kind, ObjectLostError)(f"The value {key!r} is gone: {why}.")
            dx.key_set_error(client, key, error)

    return handler


def bind_ref(
    key: Key, client: Client | None = None, inline: InlineValue | None = None
) -> ObjectRef:
    """A ref for ``key`` in this process, registering this client as a holder if it is new here.

    Used when a ref arrives inside task data or a generator's result: the scheduler must learn
    that this client holds the key, or it would never report the key's state to it.
    """
    if client is None:
        client = _runtime.client()
    fresh = dx.client_refcount(client, key) == 0
    future = dx.light_future(key, client)
    if fresh:
        # Through daskgen's scheduler extension, not Dask's own message: the key may be a
        # yield that its generator has not published yet (Dask would drop the want).
        _runtime.send_desire(client, {"op": DESIRE_OP, "keys": [key], "client": client.id})
    return ObjectRef(future, inline=inline)


def _rebuild_ref(key: Key) -> ObjectRef:
    return bind_ref(key)
