"""Publishing yields: what a generator task does with each value it yields.

This module is the worker half of daskgen's generator protocol and documents all of it.

Keys
----
A generator task ``T`` (key ``"<name>-<hex>"``) publishes yield ``i`` as the tuple key
``("<name>-yield-<hex>", i)``: the same hex, so the caller can tell which task a key came from, and
a tuple so that the dashboard groups all yields of ``name`` as ``<name>-yield``.

Messages (on Dask's existing, ordered batched streams; see 3 for the embedded cluster)
-------------------------------------------------------------------------------------
1. The generator thread hands the value to the worker's event loop (``loop.add_callback``) and
   goes on; it keeps no reference to it.
2. On the loop, the value goes into the worker's memory as it is (``dx.worker_store``: a key
   the worker never saw straight to ``memory``, any other through ``Worker.update_data``): no
   pickling, no copy. A task on this worker later receives the very same object.
3. worker -> scheduler ``daskgen-publish`` {task, caller, items: [(key, index, nbytes, inline,
   replace), ...]}: one message per chunk of up to ``DRAIN_CHUNK`` yields stored since the last
   one; the task returns only once its last chunk is queued. ``inline`` is the
   pickled value when it is at most 64 KiB (else None), so that the caller can read small values
   without a round trip, as Ray keeps small objects in the owner's memory. ``replace`` marks a
   published yield turned into an error (surplus yields, a re-run that yielded fewer).
   On daskgen's embedded cluster this message takes the worker's fast lane to the scheduler
   (``_cluster.fastlane``: a Unix socket read on the scheduler's loop, ~0.12 ms instead of ~0.6 ms a
   message here) and the task returns only once the scheduler has acknowledged its last one.
4. The scheduler extension (``_scheduler.plugin``) registers the new keys as held by the worker
   and wanted by the caller (``dx.scheduler_register_data``: ``Scheduler.update_data`` without
   its ``key-in-memory`` reports), then sends the caller's client ``daskgen-yield`` {task,
   items: [(key, index, inline, replace), ...]}, on whose receipt the client marks the keys'
   futures finished. When the caller is a client on the scheduler's own loop (daskgen's
   embedded driver) with nothing queued to it, and every key is new, the client's handler is
   called directly instead of through the stream. If the caller has disconnected, the
   extension tells the worker to drop the keys instead.
5. Backpressure: client -> scheduler ``daskgen-consumed`` {task, index}, forwarded to the worker
   running ``task``, which wakes the paused generator.

Because 3 and the task's own ``task-finished`` travel the same ordered worker -> scheduler ->
client path (or, by the fast lane, 3 is acknowledged before the task returns), a client that
sees the task end has seen every yield: no end-of-stream sentinel.

Who holds each key, when
------------------------
* From step 2 until step 4 the worker holds the value and nobody can release it: the scheduler
  does not know the key yet.
* From step 4 on, the caller's client wants the key, so Dask keeps it even before the client
  made a ``Future`` for it. There is no moment where the key exists and nobody owns it.
* On the caller, ``_objects.genstate.GenState`` receives ``daskgen-yield`` before ``key-in-memory``:
  streaming and dynamic generators wrap the key in a ``Future`` at once; static refs were made
  before the task ran; a key that no live generator or ref wants is released immediately.
* From then on Dask's reference counting decides: the last ``ObjectRef`` dropped frees the key.

Ends and errors
---------------
The task's own result is a small ``GenOutcome`` (count, mode, where the error is). An exception
after ``k`` yields is stored as an ``ErrorValue`` under key ``k`` (dynamic, streaming) or under
every key from ``k`` to ``N - 1`` (``num_returns=N``). A re-run (``retry_exceptions``, handled in
this task so that it knows which attempt is the last; or a worker death, re-run by Dask) skips
the indices already published, so no index ever mixes two attempts; if it yields fewer values,
the refs it did not reproduce are replaced by an error naming both counts.

Cancellation: ``Future.cancel`` cannot stop a thread, so the producer checks at every yield
whether the scheduler still wants the task (cancel, caller gone) and closes the generator if not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dask.sizeof import sizeof
from distributed import Worker

from .. import _dask_internals as dx
from .._cluster.fastlane import Sender
from .._protocol import (
    CONSUMED_OP,
    OUTCOME_INDEX,
    PUBLISH_OP,
    ErrorValue,
    GenOutcome,
    Key,
    boxed,
    dumps,
    yield_key,
)
from .._waiting import blocking
from ..exceptions import RayTaskError
from .interrupt import user_code

if TYPE_CHECKING:
    from .run import TaskSpec

logger = logging.getLogger("daskgen")

_producers: dict[Key, Producer] = {}
_producers_lock = threading.Lock()
# Callers with a connection of their own to this worker (``actor_host.CallerStream``), by
# (id of the worker, the caller's client id): a streaming generator's small yields go to its
# caller there too, at once, ahead of the scheduler's announcement (see ``Producer._drain``).
caller_streams: dict[tuple[int, str], Any] = {}
EARLY_MAX = 8  # yields a message may carry to the caller at once (a burst waits: throughput)


def _on_consumed(task: str, index: int, **_: Any) -> None:
    """Worker stream handler: the consumer of ``task`` has taken refs up to ``index``."""
    producer = _producers.get(task)
    if producer is not None:
        producer.on_consumed(index)


class _Cancelled(Exception):
    """The scheduler released the task (cancel, or the caller left): stop producing."""


class Producer:
    """Drives one generator inside its task and publishes each yield."""

    def __init__(
        self,
        spec: TaskSpec,
        worker: Worker,
        task: Key,
        caller: str,
        loop: Any = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        self.spec = spec
        # Whether the caller still wants this run: its Dask task still runs here, or (a direct
        # actor call, which has no Dask task) whatever the actor host says.
        self._is_alive = alive or (lambda: dx.worker_task_alive(worker, task))
        self.loop = loop  # an async actor's event loop, where async generators must run
        self.worker = worker
        self.task = task
        self.caller = caller
        self.count = 0  # indices published so far, over every attempt in this run
        self.yielded = 0  # values the current attempt has yielded
        self.consumed = 0  # refs the consumer has taken (backpressure)
        self.cond = threading.Condition()
        self._outbox: list[tuple[Key, int, Any, bytes | None, bool]] = []
        self._outbox_lock = threading.Lock()
        self._drain_scheduled = False
        self._drained = threading.Event()  # set while every queued yield has been announced
        self._drained.set()
        self._drain_error: Exception | None = None
        self._sender = Sender(worker)  # the fast lane on the embedded cluster, else Dask's stream

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, index: int, value: Any) -> None:
        """Store ``value`` as yield ``index`` on this worker and announce it (non-blocking)."""
        self._send(index, value, replace=False)

    def overwrite(self, indices: range, error: RayTaskError) -> None:
        """Replace published yields by an error (a surplus or a changed count on re-run)."""
        value = ErrorValue(error)
        for i in indices:
            self._send(i, value, replace=True)

    def announce_outcome(self, outcome: GenOutcome) -> None:
        """Publish the call's own result under its key, behind its yields, and wait until it is
        announced (a direct actor call: no Dask task reports its end)."""
        self._send(OUTCOME_INDEX, outcome, replace=False)
        self._wait_unless_closing(self._drained.wait)
        if self._drain_error is not None:
            raise self._drain_error
        self._wait_unless_closing(self._sender.settle)

    def _send(self, index: int, value: Any, replace: bool) -> None:
        # Small values also travel inline, so the caller's get() needs no round trip (as Ray
        # keeps small objects in the owner's memory). Pickled here, in the producer's thread.
        key = self.task if index == OUTCOME_INDEX else yield_key(self.task, index)
        inline = inline_bytes(value)
        # a large builtin container is stored boxed: it then moves as one pickle (see Put)
        item = (key, index, value if inline is not None else boxed(value), inline, replace)
        with self._outbox_lock:
            self._outbox.append(item)
            schedule = not self._drain_scheduled
            self._drain_scheduled = True
            self._drained.clear()
        if schedule:
            # Queued before the task returns, so it runs before the task's completion report.
            self.worker.loop.add_callback(self._drain)

    def _drain(self) -> None:
        """On the worker's loop: store every queued value, then one message for all of them."""
        with self._outbox_lock:
            batch, self._outbox = self._outbox[:DRAIN_CHUNK], self._outbox[DRAIN_CHUNK:]
            rest = bool(self._outbox)
            if rest:
                # The rest after this chunk's message has gone: the scheduler and the caller
                # work on this chunk while the worker stores the next one.
                self.worker.loop.add_callback(self._drain)
            else:
                self._drain_scheduled = False
        try:
            stored = dx.worker_store(
                self.worker, {key: value for key, _, value, _, replace in batch if not replace}
            )
            items = []
            for key, index, value, inline, replace in batch:
                if replace:
                    dx.worker_overwrite(self.worker, [key], value)
                elif key not in stored:
                    continue  # this worker already holds that index from an earlier attempt
                items.append((key, index, stored.get(key, 0), inline, replace))
            if items:
                self._sender.send(
                    {"op": PUBLISH_OP, "task": self.task, "caller": self.caller, "items": items}
                )
                if self.spec.mode == "streaming" and len(items) <= EARLY_MAX:
                    self._send_early(items)
        except Exception as exc:  # the task fails with it (see run), rather than lose yields
            self._drain_error = exc
        finally:
            if not rest:
                with self._outbox_lock:
                    if not self._outbox:
                        self._drained.set()

    def _send_early(self, items: list[tuple[Key, int, int, bytes | None, bool]]) -> None:
        """On the worker's loop, right after their publish message: the small new yields of a
        streaming generator, straight to the caller's connection to this worker, if it has one.

        What the caller waits on in ``next()`` is the announcement: through the scheduler it
        crosses two processes (~1-2 ms on a real cluster), straight it crosses one. The
        scheduler's announcement still comes, and settles the key (``GenState.on_early``)."""
        stream = caller_streams.get((id(self.worker), self.caller))
        if stream is None or not stream.open:
            return
        early = [
            (key, index, inline)
            for key, index, _, inline, replace in items
            if inline is not None and not replace and index != OUTCOME_INDEX
        ]
        if early:
            stream.send({"op": "yields", "task": self.task, "items": early})

    # -- running -------------------------------------------------------------------------------

    def run(self, args: list[Any], kwargs: dict[str, Any]) -> GenOutcome | None:
        """Run the generator; return once every yield is announced (ahead of the task's end)."""
        try:
            return self._run(args, kwargs)
        finally:
            # Waits for the worker's loop, then for the scheduler to have handled what went by
            # the fast lane.
            self._wait_unless_closing(self._drained.wait)
            if self._drain_error is not None:
                raise self._drain_error
            self._wait_unless_closing(self._sender.settle)

    def _wait_unless_closing(self, ready: Callable[[float], bool]) -> None:
        """Poll ``ready(timeout)`` until true; give up once the worker is shutting down (it never
        drains then), so as not to hang."""
        while not ready(0.5):
            if dx.worker_is_closing(self.worker):
                return

    def _run(self, args: list[Any], kwargs: dict[str, Any]) -> GenOutcome | None:
        spec = self.spec
        if spec.backpressure:
            dx.worker_add_stream_handler(self.worker, CONSUMED_OP, _on_consumed)
            with _producers_lock:
                _producers[self.task] = self
        try:
            attempt = 0
            while True:
                try:
                    self._drive(args, kwargs)
                except _Cancelled:
                    return None
                except _Surplus as surplus:
                    return self._finish_surplus(surplus.total)
                except Exception as exc:
                    if spec.retry.retryable(exc, attempt):
                        attempt += 1
                        continue  # in this task: only here do we know whether this was the last try
                    return self._finish_error(spec.wrap(exc), self.yielded)
                return self._finish(self.yielded)
        finally:
            if spec.backpressure:
                with _producers_lock:
                    _producers.pop(self.task, None)

    def _drive(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Run the generator once (one attempt), publishing the indices not published yet."""
        spec = self.spec
        limit = spec.num_returns if spec.mode == "static" else None
        self.yielded = index = 0
        made = next(user_code(_call_once(spec.fn, args, kwargs)))  # a plain function runs here
        it = _iterate(made, spec, self.loop)
        try:
            for value in user_code(it):  # cancel() may interrupt each step (_interrupt)
                if not self._is_alive():
                    raise _Cancelled
                if limit is not None and index >= limit:
                    del value
                    raise _Surplus(index + 1 + sum(1 for _ in self._alive(it)))
                if index >= self.count:  # a re-run skips what an earlier attempt published
                    self.publish(index, value)
                    self.count = index + 1
                del value  # the generator must not keep past values alive
                self.yielded = index = index + 1
                self._respect_backpressure()
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _alive(self, it: Iterator[Any]) -> Iterator[Any]:
        for _ in it:
            if not self._is_alive():
                raise _Cancelled
            yield None

    def _respect_backpressure(self) -> None:
        limit = self.spec.backpressure
        if not limit:
            return
        with self.cond:
            if self.count - self.consumed < limit:
                return
        with blocking(), self.cond:
            while self.count - self.consumed >= limit:
                # Woken by the consumer; the timeout only re-checks for cancellation.
                self.cond.wait(timeout=0.5)
                if not self._is_alive():
                    raise _Cancelled

    def on_consumed(self, index: int) -> None:
        with self.cond:
            self.consumed = max(self.consumed, index + 1)
            self.cond.notify_all()

    # -- endings -------------------------------------------------------------------------------

    def _count_error(self, got: int) -> RayTaskError:
        return self.spec.wrap(
            ValueError(f"Task returned {got} objects, but num_returns={self.spec.num_returns}.")
        )

    def _fail(self, indices: range, error: RayTaskError) -> None:
        """Make the refs at ``indices`` raise ``error``: publish new ones, replace old ones."""
        old = range(indices.start, min(indices.stop, self.count))
        if old:
            self.overwrite(old, error)
        for i in range(max(indices.start, self.count), indices.stop):
            self.publish(i, ErrorValue(error))
        self.count = max(self.count, indices.stop)

    def _finish(self, yielded: int) -> GenOutcome:
        spec = self.spec
        if spec.mode == "static" and yielded < spec.num_returns:
            self._fail(range(yielded, spec.num_returns), self._count_error(yielded))
        elif yielded < self.count:
            # A re-run yielded fewer values than an earlier attempt already handed out.
            err = spec.wrap(
                ValueError(
                    f"The generator was re-run and yielded {yielded} values, but an earlier "
                    f"attempt yielded {self.count}; refs {yielded}..{self.count - 1} are invalid."
                )
            )
            self.overwrite(range(yielded, self.count), err)
        return GenOutcome(self.task, spec.mode, self.count)

    def _finish_error(self, error: RayTaskError, yielded: int) -> GenOutcome:
        spec = self.spec
        if spec.mode == "static":
            if yielded >= spec.num_returns:
                # Every ref already has its value; like Ray, the late error is only logged.
                logger.error(
                    "Unhandled error: Task threw exception, but all return values already "
                    "created. This should only occur when using generator tasks.\n%s",
                    error,
                )
            else:
                self._fail(range(yielded, spec.num_returns), error)
            return GenOutcome(self.task, spec.mode, self.count)
        # The error is one more ref, after the values of this attempt.
        self._fail(range(yielded, yielded + 1), error)
        if self.count > yielded + 1:  # an earlier attempt went further: those refs are invalid
            self.overwrite(range(yielded + 1, self.count), error)
        return GenOutcome(self.task, spec.mode, yielded + 1, error_index=yielded)

    def _finish_surplus(self, total: int) -> GenOutcome:
        # Beyond Ray (which only logs this, ray#28689): every ref fails, naming both counts.
        n = self.spec.num_returns
        self.overwrite(range(n), self._count_error(total))
        return GenOutcome(self.task, self.spec.mode, self.count)

    def fail_before_start(self, error: RayTaskError) -> GenOutcome:
        return self._finish_error(error, 0)


class _Surplus(Exception):
    def __init__(self, total: int) -> None:
        self.total = total


def _call_once(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Iterator[Any]:
    yield fn(*args, **kwargs)


def _iterate(result: Any, spec: TaskSpec, loop: Any = None) -> Iterator[Any]:
    """The values a call produced: a generator's yields, or a returned sequence's items."""
    if inspect.isasyncgen(result):
        return _drain_async(result) if loop is None else _drain_async_on(result, loop)
    if spec.mode != "static" or inspect.isgenerator(result):
        return result
    # num_returns=N on a plain function: it returns N values, published like N yields.
    try:
        return iter(result)
    except TypeError:
        raise ValueError(
            f"Task returned a {type(result).__name__}, but num_returns={spec.num_returns} needs "
            f"a sequence of {spec.num_returns} values."
        ) from None


def _drain_async_on(agen: Any, loop: Any) -> Iterator[Any]:
    """Iterate an async generator that must run on ``loop`` (an async actor's), from here.

    Every step runs in one asyncio task, as Ray runs an async generator method: the task and
    its context variables stay the same between yields. This thread asks for each value.
    """
    requests: asyncio.Queue[concurrent.futures.Future[Any] | None] = asyncio.Queue()

    async def drive() -> None:
        try:
            while (reply := await requests.get()) is not None:
                try:
                    reply.set_result(await agen.__anext__())
                except BaseException as exc:  # StopAsyncIteration, its error, a cancel
                    reply.set_exception(exc)
                    return  # the generator is over
        finally:
            await agen.aclose()

    driver = asyncio.run_coroutine_threadsafe(drive(), loop)
    try:
        while True:
            reply: concurrent.futures.Future[Any] = concurrent.futures.Future()
            loop.call_soon_threadsafe(requests.put_nowait, reply)
            try:
                yield reply.result()
            except StopAsyncIteration:
                return
    finally:
        loop.call_soon_threadsafe(requests.put_nowait, None)
        driver.result()


def _drain_async(agen: Any) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


INLINE_MAX = 64 * 1024
# Yields stored per turn of the worker's loop. A generator that yields faster than the worker
# stores gets its yields announced in chunks, which the scheduler and caller handle while the
# worker stores the next chunk, rather than in one message at the end.
DRAIN_CHUNK = 500


def publish_value(
    worker: Any, caller: str, key: Key, value: Any, blob: bytes | None = None
) -> None:
    """Make ``key`` (stored here) a real cluster key held by ``caller``, as yields are: the
    scheduler registers it and tells the caller (with the value inline if ``blob``)."""
    item = (key, OUTCOME_INDEX, sizeof(value), blob, False)
    Sender(worker).send({"op": PUBLISH_OP, "task": key, "caller": caller, "items": [item]})


def inline_bytes(value: Any) -> bytes | None:
    """``value`` pickled if it is small (at most ``INLINE_MAX`` bytes), else None."""
    try:
        if sizeof(value) > INLINE_MAX:
            return None
        blob = dumps(value)
    except Exception:
        return None  # unpicklable: Dask reports it if someone fetches the value
    return blob if len(blob) <= INLINE_MAX else None
