"""The worker half of actors: live instances, their executors, and the connections callers send
calls on. Runs in the worker process that hosts the actors (``_client.actor_channel`` is the
caller's half; ``_client.actors`` the API).

How a call travels
------------------
* Each caller process opens one connection to each worker hosting its actors: the actor wire
  (``actor_wire``: a plain socket, the caller's thread writes calls and an actor's thread its
  result, no event-loop hop on the way) where the worker is on ``tcp://``, otherwise the
  ``daskgen_actor_stream`` handler :func:`install` registers on the worker (Dask's comm layer,
  batches of messages on a ``BatchedSend``). Both carry the same messages:

  - ``call`` {actor, key, method, packed, deps, mode, n, backpressure}: run a method;
  - ``cancel`` {key}; ``release`` {keys}: results the caller dropped before passing them on;
    ``promote`` {keys}: results the caller passes on (see below); ``consumed`` {key, index}:
    backpressure of a generator method; ``fetch`` {id, keys}: large values a ``get`` takes
    from here (``_client.fetch``); ``store`` {key, chunks}: a call's large arguments, kept
    here for the task that takes them (``_client.stored_args``).

* Calls of one actor start in the order they arrived (a FIFO per actor; a call whose arguments
  are not ready holds back the calls after it, as in Ray). No timed wait is involved: a call that
  is cancelled or whose arguments failed simply leaves the FIFO.
* A plain call's result (or error) is stored in this worker's memory under the call's key, the
  very object (no copy), and:

  - if it pickles to at most 64 KiB, sent back inline on the connection (``result`` {key,
    blob}); the scheduler does not know the key. When the caller passes the ref on (to a task,
    or out of its process) it asks for it to be **promoted**: the value is then published as
    generators publish their yields (``_worker.publish``), a real key held by the caller. When the
    caller drops it unpromoted, ``release`` frees it here;
  - larger, it is published at once (the caller fetches it through Dask, from this worker).

* A generator method publishes its yields as a generator task does, then its own outcome under
  the call's key, on the same ordered path: the caller sees the end after every yield.
* A caller whose connection closes frees the results it never promoted; a worker that leaves
  takes its actors with it (the scheduler extension tells every client, see ``_client.actors``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import inspect
import logging
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle
from dask.sizeof import sizeof
from distributed import get_worker
from distributed.comm import CommClosedError

from .. import _dask_internals as dx
from .._job import EnvSpec, Job
from .._protocol import (
    ACTOR_END_OP,
    ACTOR_OP,
    ACTOR_STREAM_OP,
    ErrorValue,
    Key,
    Packed,
    as_key,
    boxed,
    dumps,
    with_code_file,
)
from .._runtime import current_actor, current_call, current_job
from ..exceptions import (
    ActorDiedError,
    ObjectLostError,
    RayTaskError,
    RuntimeEnvSetupError,
    TaskCancelledError,
)
from . import actor_wire, direct
from .output import origin_for, task_origin
from .publish import Producer, _producers, caller_streams, inline_bytes, publish_value
from .run import Retry, TaskSpec, check_scheduler, unpack_args, wrap_error
from .runtime_env import applied
from .shared_memory import Mapped

logger = logging.getLogger("daskgen")

REPLY_INTERVAL = 0.001  # s: batching of replies to a caller (daskgen's own connection)
DEFAULT_GROUP = ""  # the concurrency group of methods that name none (max_concurrency)

_hosts: dict[str, ActorHost] = {}
_dead: dict[str, str] = {}  # actor id -> why it is gone (killed, its constructor failed)
_waiting: dict[str, list[HostedCall]] = {}  # calls that came before their actor was created
_calls: dict[Key, HostedCall] = {}  # calls not finished yet, for cancel


# ----------------------------------------------------------------------------- the connection


_wires: weakref.WeakKeyDictionary[Any, actor_wire.WireServer] = weakref.WeakKeyDictionary()


def install(dask_worker: Any) -> tuple[str, int, bytes, str | None] | None:
    """Register the actor-stream handler on the worker and open its actor wire (on its loop;
    idempotent). Run by the creation task, and by ``Client.run`` from a caller before it
    connects, which gets where the wire listens (None: Dask's comm layer only)."""
    if not dx.worker_has_handler(dask_worker, ACTOR_STREAM_OP):
        dx.worker_add_handler(dask_worker, ACTOR_STREAM_OP, _Server(dask_worker).serve)
        dx.worker_add_stream_handler(dask_worker, ACTOR_END_OP, _on_unreferenced)
    wire = _wires.get(dask_worker)
    if wire is None and str(dask_worker.address).startswith("tcp://"):
        try:
            wire = _wires[dask_worker] = actor_wire.WireServer(dask_worker, _caller_stream)
        except OSError as exc:  # no port to be had: callers keep to Dask's comm layer
            logger.warning("daskgen: no actor wire on %s: %r", dask_worker.address, exc)
    return wire.contact() if wire is not None else None


def _caller_stream(connection: Any, worker: Any, client: str) -> CallerStream:
    return CallerStream(connection, client, worker)


def _on_unreferenced(actor: str, **_: Any) -> None:
    """The scheduler: no handle of ``actor`` is left anywhere."""
    host = _hosts.get(actor)
    if host is not None:
        host.unreferenced = True
        host.maybe_end()


class _Server:
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    async def serve(self, comm: Any, client: str, **_: Any) -> None:
        """One caller process's connection: read its batches until it closes."""
        stream = CallerStream(_DaskReplies(comm, self.worker), client, self.worker)
        try:
            while True:
                batch = await comm.read()
                for msg in batch:
                    stream.handle(msg)
        except (CommClosedError, OSError):
            pass
        finally:
            stream.closed()


class _DaskReplies:
    """Replies on a Dask comm (``BatchedSend``), from any thread."""

    direct = False  # an actor's thread does not write results itself

    def __init__(self, comm: Any, worker: Any) -> None:
        self.batched = dx.batched_send(comm, REPLY_INTERVAL)
        self.loop = worker.loop

    def send(self, msg: dict[str, Any]) -> None:
        if dx.on_loop_of(self.loop):
            self.batched.send(msg)
        else:
            self.loop.add_callback(self._send, msg)

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            self.batched.send(msg)
        except CommClosedError:
            pass

    def send_many(self, msgs: list[dict[str, Any]]) -> None:
        for msg in msgs:
            self.send(msg)

    def abort(self) -> None:
        self.batched.abort()


# Fetched values up to this size are written from the worker's loop (~1.6 ms per 8 MB on a Unix
# socket here): handing them to another thread first cost up to a few ms more whenever a task's
# thread held the GIL (a generator filling its next array). Larger ones go from a thread.
SEND_ON_LOOP_BYTES = 16 << 20
_sender: concurrent.futures.ThreadPoolExecutor | None = None
_sender_lock = threading.Lock()


def _fetch_sender() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that writes fetched values (made on first use)."""
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="daskgen-wire-fetch"
            )
        return _sender


def _send_values(send_raw: Callable[..., None], number: int, values: dict[Key, Any]) -> None:
    """Pickle ``values`` with their buffers apart and write them: one message listing each
    key with how many chunks are its, then the chunks themselves (``_protocol.read_raw``)."""
    parts = []
    chunks: list[Any] = []
    for key, value in values.items():
        buffers: list[pickle.PickleBuffer] = []
        try:
            head = dumps(value, buffers)
            raw = [buffer.raw() for buffer in buffers]
        except Exception:  # not picklable here: the caller's Dask gather fetches it
            logger.debug("daskgen: cannot send %r by the wire", key, exc_info=True)
            continue
        parts.append((key, 1 + len(raw)))
        chunks += [head, *raw]
    msg = {"op": "fetched", "id": number, "parts": parts}
    if chunks:
        msg["raw"] = [memoryview(chunk).nbytes for chunk in chunks]
    send_raw(msg, chunks)


class CallerStream:
    """One caller process, as this worker sees it (on the worker's loop; ``send`` from any
    thread). ``replies``: the connection back, an actor wire or a Dask comm."""

    def __init__(self, replies: Any, client: str, worker: Any) -> None:
        self.client = client
        self.worker = worker
        self.replies = replies
        self.direct: bool = replies.direct  # results go back from the actor's thread
        self.held: set[Key] = set()  # results stored here, not promoted, not released
        self.open = True
        self.mapped: Mapped | None = None  # shared memory the caller lent (``_store``)
        caller_streams[(id(worker), client)] = self  # small yields go to it at once too

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        try:
            if op == "call":
                self._call(msg)
            elif op == "task":  # a plain task call sent straight here (see ``direct``)
                direct.start(self, msg)
            elif op == "cancel":
                call = _calls.get(as_key(msg["key"]))
                if call is not None:
                    call.host.cancel(call)
            elif op == "release":
                self._release([as_key(k) for k in msg["keys"]])
            elif op == "promote":
                self._promote([as_key(k) for k in msg["keys"]])
            elif op == "ready":
                call = _calls.get(as_key(msg["key"]))
                if call is not None:
                    call.host.ready(call, pickle.loads(msg["error"]) if msg["error"] else None)
            elif op == "drop":  # the caller holds no handle of this actor any more
                host = _hosts.get(msg["actor"])
                if host is not None:
                    host.callers.discard(self)
                    host.maybe_end()
            elif op == "consumed":
                producer = _producers.get(as_key(msg["key"]))
                if producer is not None:
                    producer.on_consumed(msg["index"])
            elif op == "fetch":
                self._fetch(msg["id"], [as_key(k) for k in msg["keys"]])
            elif op == "store":
                self._store(as_key(msg["key"]), msg)
            else:
                logger.warning("daskgen: unknown actor message %r from %s", op, self.client)
        except Exception:  # one bad message must not close the caller's connection
            logger.exception("daskgen: failed to handle actor message %r", op)

    def _call(self, msg: dict[str, Any]) -> None:
        call = HostedCall(self, msg)
        host = _hosts.get(call.actor)
        if host is not None:
            _calls[call.key] = call
            host.enqueue(call)
        elif call.actor in _dead:
            self.reply_error(call, ActorDiedError(died_message(call.actor, _dead[call.actor])))
        else:  # its creation task has not run here yet
            _calls[call.key] = call
            _waiting.setdefault(call.actor, []).append(call)

    def _release(self, keys: list[Key]) -> None:
        stored = []
        for key in keys:
            if key in self.held:
                self.held.discard(key)
                stored.append(key)
            else:
                call = _calls.get(key)
                if call is not None:
                    call.wanted = False  # not finished yet: its result is not kept
        if stored:
            dx.worker_forget(self.worker, stored)

    def _promote(self, keys: list[Key]) -> None:
        for key in keys:
            if key in self.held:
                self.held.discard(key)
                publish_value(self.worker, self.client, key, dx.worker_value(self.worker, key))
            else:
                call = _calls.get(key)
                if call is not None:
                    call.promote = True  # published as it finishes
                else:
                    logger.warning("daskgen: cannot promote %r: not held here", key)

    def _store(self, key: Key, msg: dict[str, Any]) -> None:
        """A call's large arguments, their pickle and buffers (``_client.stored_args``), the
        buffers received after the message or lent as shared memory (``shm``: see
        ``_client.shared_memory``): kept here as they came, and published as a real key held
        by the caller, which submits the task that takes them once the scheduler has
        announced it."""
        chunks = msg["chunks"]
        if "shm" in msg:
            if self.mapped is None:
                self.mapped = Mapped(self.worker.loop.asyncio_loop, self.send)
            chunks = [*chunks, *self.mapped.views(msg["shm"], msg.get("fds", ()), msg["drop"])]
        packed = Packed(chunks[0], chunks[1:])
        dx.worker_store(self.worker, {key: packed})
        publish_value(self.worker, self.client, key, packed)

    def _fetch(self, number: int, keys: list[Key]) -> None:
        """The caller's ``get`` wants these large values (see ``_client.fetch``): send those
        held here, pickled with their buffers out of band, from this loop up to
        :data:`SEND_ON_LOOP_BYTES` in all, else from a thread (the loop goes on meanwhile).
        Keys not held here, and every key when the caller is on Dask's comm layer, are
        answered as missing: the caller's Dask gather fetches them."""
        values = {}
        for key in keys:
            try:
                values[key] = dx.worker_value(self.worker, key)
            except KeyError:
                pass
        send_raw = getattr(self.replies, "send_raw", None)
        if values and send_raw is not None:
            if sum(map(sizeof, values.values())) <= SEND_ON_LOOP_BYTES:
                _send_values(send_raw, number, values)
            else:
                _fetch_sender().submit(_send_values, send_raw, number, values)
        else:
            self.send({"op": "fetched", "id": number, "parts": []})

    def send(self, msg: dict[str, Any]) -> None:
        self.send_many([msg])

    def send_many(self, msgs: list[dict[str, Any]]) -> None:
        """Replies (several at once: on the wire, one write)."""
        if self.open:
            try:
                self.replies.send_many(msgs)
            except CommClosedError:
                self.open = False

    def reply_error(self, call: HostedCall, error: BaseException) -> None:
        """Fail a call without storing anything (the caller's ref raises ``error``)."""
        _calls.pop(call.key, None)
        call.state = "done"
        call.finished.set()
        if call.host is not None:
            call.host.maybe_end()
        if call.mode == "plain":
            self.send({"op": "result", "key": call.key, "blob": inline_bytes(ErrorValue(error))})
        else:
            self.send({"op": "failed", "key": call.key, "blob": inline_bytes(error)})

    def closed(self) -> None:
        """The caller is gone: free the results it never promoted."""
        self.open = False
        if caller_streams.get((id(self.worker), self.client)) is self:
            del caller_streams[(id(self.worker), self.client)]
        direct.caller_left(self)
        if self.mapped is not None:
            self.mapped.close()
        if self.held:
            dx.worker_forget(self.worker, list(self.held))
            self.held.clear()
        for call in [c for c in _calls.values() if c.stream is self]:
            call.wanted = False
            if call.held_back is not None:  # "ready" will never come
                call.error = ErrorValue(ActorDiedError("its caller left"))
                call.held_back.set()
        for calls in _waiting.values():
            calls[:] = [c for c in calls if c.stream is not self]
        self.replies.abort()
        for host in [h for h in _hosts.values() if self in h.callers]:
            host.callers.discard(self)
            host.maybe_end()


class HostedCall:
    """One method call on its way through the host."""

    __slots__ = (
        "stream",
        "host",
        "actor",
        "key",
        "method",
        "name",
        "packed",
        "deps",
        "values",
        "mode",
        "num_returns",
        "backpressure",
        "state",
        "future",
        "cancelled",
        "wanted",
        "promote",
        "producer",
        "held_back",
        "owner",
        "group",
        "error",
        "finished",
    )

    def __init__(self, stream: CallerStream, msg: dict[str, Any]) -> None:
        self.stream = stream
        self.host: ActorHost = None  # type: ignore[assignment]  # set by ActorHost.enqueue
        self.actor: str = msg["actor"]
        self.key: Key = as_key(msg["key"])
        self.method: str = msg["method"]
        self.name: str = msg["name"]
        self.packed: bytes | None = msg["packed"]
        self.deps: list[Key] = [as_key(k) for k in msg.get("deps") or ()]
        self.values: tuple[Any, ...] = ()
        self.mode: str = msg["mode"]
        self.num_returns: int = msg["n"]
        self.backpressure: int | None = msg.get("backpressure")
        self.owner: str | None = msg.get("owner")  # whose terminal shows what it prints
        self.group: str = msg.get("group") or DEFAULT_GROUP  # its concurrency group
        self.state = "queued"  # -> "submitted" -> "running" -> "done"
        self.future: Any = None  # the executor's future, or the asyncio task's
        self.cancelled = False
        self.wanted = True  # the caller still holds the ref
        self.promote = False  # publish the result as it finishes
        self.producer: Producer | None = None
        # Set while the caller makes the refs passed to it real keys ("ready" then releases
        # it, and the calls behind it).
        self.held_back: asyncio.Event | None = asyncio.Event() if msg.get("wait") else None
        self.error: ErrorValue | None = None
        self.finished = asyncio.Event()  # set once its result is stored here

    def alive(self) -> bool:
        return not self.cancelled and self.stream.open


# ------------------------------------------------------------------------------------ the host


class ActorHost:
    """The live instance of one actor in this worker, and what runs its calls."""

    def __init__(
        self,
        actor_id: str,
        instance: Any,
        concurrency: dict[str, int],
        is_async: bool,
        ctx: contextvars.Context,
        worker: Any,
    ) -> None:
        """``concurrency``: the max concurrency of each concurrency group (``DEFAULT_GROUP``:
        the actor's ``max_concurrency``): a thread pool each, or an asyncio limit each for an
        async actor, as Ray's concurrency groups."""
        max_concurrency = concurrency[DEFAULT_GROUP]
        self.actor_id = actor_id
        self.instance = instance
        self.is_async = is_async
        self.worker = worker
        self.ctx = ctx
        self.env: EnvSpec | None = None  # its runtime_env, applied around every call
        self.queue: collections.deque[HostedCall] = collections.deque()
        # Lifetime: the caller streams that sent calls and still hold a handle, and whether the
        # scheduler said no handle is left anywhere (see maybe_end).
        self.callers: set[CallerStream] = set()
        self.unreferenced = False
        self._dispatching = False
        self._done: list[tuple[HostedCall, Any, bytes | None, bool]] = []
        self._done_lock = threading.Lock()
        # Threaded calls handed to the executor and not started yet: while there are some, a
        # finished call's result waits for _deliver, which sends a batch in one write.
        self._not_started = 0
        self._count_lock = threading.Lock()
        # ``ctx`` (the worker's context, plus the actor id) makes get_worker() and
        # get_runtime_context() work in the actor's own threads.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.generators: concurrent.futures.ThreadPoolExecutor | None = None
        self.executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self.semaphores: dict[str, asyncio.Semaphore] = {}
        if is_async:
            self.loop = asyncio.new_event_loop()
            self.semaphores = {g: asyncio.Semaphore(n) for g, n in concurrency.items()}
            self.semaphore = self.semaphores[DEFAULT_GROUP]
            self.thread = threading.Thread(
                target=ctx.run, args=(self.loop.run_forever,), daemon=True, name="daskgen-actor"
            )
            self.thread.start()
            # Threads that drive async generator methods (each step runs on the loop).
            self.generators = concurrent.futures.ThreadPoolExecutor(
                max_concurrency, "daskgen-actor-gen", _enter_context, (ctx,)
            )
        else:
            self.executors = {
                g: concurrent.futures.ThreadPoolExecutor(
                    n, f"daskgen-actor{'-' + g if g else ''}", _enter_context, (ctx,)
                )
                for g, n in concurrency.items()
            }
            self.executor = self.executors[DEFAULT_GROUP]

    # -- order (on the worker's loop) --------------------------------------------------------

    def enqueue(self, call: HostedCall) -> None:
        call.host = self
        self.callers.add(call.stream)
        if not self.queue and not call.deps and call.held_back is None:
            self._start(call)  # the common case: nothing ahead, nothing to fetch
            return
        self.queue.append(call)
        if not self._dispatching:
            self._dispatching = True
            asyncio.ensure_future(self._dispatch())

    async def _dispatch(self) -> None:
        """Start queued calls in order, each once its arguments are here."""
        try:
            while self.queue:
                call = self.queue[0]
                if call.held_back is not None:
                    await call.held_back.wait()  # the caller sends "ready" (or its stream closes)
                    call.held_back = None
                    if call.error is not None:
                        self.queue.popleft()
                        call.stream.reply_error(call, call.error.error)
                        continue
                if call.deps and not call.cancelled and not call.values:
                    await self._own_results(call.deps)
                    values, missing = await dx.worker_fetch(self.worker, call.deps)
                    if missing:
                        self.queue.popleft()
                        lost = ObjectLostError(
                            f"The arguments {missing} of {call.name} are gone from the cluster."
                        )
                        call.stream.reply_error(call, wrap_error(lost, call.name))
                        continue
                    call.values = tuple(values[k] for k in call.deps)
                self.queue.popleft()
                self._start(call)
        except Exception:
            logger.exception("daskgen: actor %s failed to start a call", self.actor_id)
        finally:
            self._dispatching = False

    def ready(self, call: HostedCall, error: ErrorValue | None) -> None:
        """The refs passed to a held-back call are real keys now (or ``error``)."""
        call.error = error
        if call.held_back is not None:
            call.held_back.set()

    async def _own_results(self, keys: list[Key]) -> None:
        """Wait for the arguments that are results of calls still running on this worker."""
        for key in keys:
            call = _calls.get(key)
            if call is not None and call.stream.open:
                await call.finished.wait()

    def _start(self, call: HostedCall) -> None:
        if call.cancelled:
            call.stream.reply_error(call, self._cancelled_before(call))
            return
        call.state = "submitted"
        if call.mode != "plain":
            pool = self.generators if self.is_async else self._pool(call)
            assert pool is not None
            call.future = pool.submit(self._run_generator, call)
        elif self.is_async:
            assert self.loop is not None
            # Its task copies the context of the thread that asks for it (the worker's loop, the
            # wire's reader): asked from within the actor's context, the method sees
            # get_worker() and the actor's ids (else ray.get there would start a new session).
            call.future = self.ctx.copy().run(
                asyncio.run_coroutine_threadsafe, self._run_async(call), self.loop
            )
        else:
            with self._count_lock:
                self._not_started += 1
            call.future = self._pool(call).submit(self._run_sync, call)

    def _pool(self, call: HostedCall) -> concurrent.futures.ThreadPoolExecutor:
        return self.executors.get(call.group) or self.executors[DEFAULT_GROUP]

    # -- running (in the actor's threads or loop) --------------------------------------------

    def _run_sync(self, call: HostedCall) -> None:
        with self._count_lock:
            self._not_started -= 1
        if call.cancelled:  # cancelled after it was submitted, before it started
            self._finished(call, ErrorValue(self._cancelled_before(call)))
            return
        call.state = "running"
        value = self._in_call(call, lambda: self._invoke(call))
        if call.cancelled:
            # As Ray: a running method of a threaded actor is not interrupted; its get raises.
            value = ErrorValue(TaskCancelledError(None, f"Task: {call.key} was cancelled."))
        self._finished(call, value)

    async def _run_async(self, call: HostedCall) -> None:
        try:
            async with self.semaphores.get(call.group, self.semaphore):
                if call.cancelled:
                    self._finished(call, ErrorValue(self._cancelled_before(call)))
                    return
                call.state = "running"
                call.future = asyncio.current_task()
                value = self._in_call(call, lambda: self._invoke(call))
                if inspect.isawaitable(value):
                    try:
                        with applied(self.env, self.worker):  # while the coroutine runs
                            value = await value
                    except asyncio.CancelledError as cancel:
                        cancelled = TaskCancelledError(str(call.key))
                        cancelled.__context__ = cancel
                        value = ErrorValue(self._wrap(cancelled.with_traceback(None), call))
                    except Exception as exc:
                        value = ErrorValue(self._wrap(exc, call))
        except asyncio.CancelledError:  # cancelled while it waited for its turn
            value = ErrorValue(self._cancelled_before(call))
        self._finished(call, value)

    def _invoke(self, call: HostedCall) -> Any:
        """The method's result, or its error as a value (a coroutine for ``async def``)."""
        try:
            args, kwargs = unpack_args(call.packed, call.values)
            return _method(self.instance, call.method)(*args, **kwargs)
        except Exception as exc:
            return ErrorValue(self._wrap(exc, call))

    def _wrap(self, exc: BaseException, call: HostedCall) -> RayTaskError:
        return wrap_error(
            exc, call.name, f"actor_id={self.actor_id}, repr={object.__repr__(self.instance)}"
        )

    def _run_generator(self, call: HostedCall) -> None:
        """A generator method: publish its yields, then its outcome, as a generator task."""
        spec = TaskSpec(
            _method(self.instance, call.method),
            call.name,
            call.mode,
            call.num_returns,
            Retry(False, 0),
            call.backpressure,
        )
        producer = Producer(
            spec, self.worker, call.key, call.stream.client, loop=self.loop, alive=call.alive
        )
        call.producer = producer
        call.state = "running"

        def run() -> Any:
            try:
                args, kwargs = unpack_args(call.packed, call.values)
            except RayTaskError as upstream:
                return producer.fail_before_start(upstream)
            return producer.run(args, kwargs)

        try:
            outcome = self._in_call(call, run)
            if outcome is not None:
                producer.announce_outcome(outcome)
            else:  # stopped early (cancel, or the caller left): the caller ends the stream
                call.stream.send({"op": "failed", "key": call.key, "blob": None})
        except Exception as exc:
            error = self._wrap(exc, call)
            call.stream.send({"op": "failed", "key": call.key, "blob": inline_bytes(error)})
        finally:
            call.state = "done"
            _calls.pop(call.key, None)
            if self.unreferenced:
                self.worker.loop.add_callback(self.maybe_end)

    def _in_call(self, call: HostedCall, fn: Callable[[], Any]) -> Any:
        """``fn()`` with ``get_runtime_context().get_task_id()`` answering the call's key and
        its output forwarded to the caller."""
        token = current_call.set(str(call.key))
        origin = task_origin.set(origin_for(call.owner, call.name, self.worker))
        try:
            with applied(self.env, self.worker):
                return fn()
        finally:
            task_origin.reset(origin)
            current_call.reset(token)

    # -- results (back on the worker's loop, in batches) -------------------------------------

    def _finished(self, call: HostedCall, value: Any) -> None:
        """From the actor's thread or loop: hand the result to the worker's loop."""
        blob = inline_bytes(value)  # pickled here, off the worker's loop
        if blob is None:
            value = boxed(value)  # a large list moves between workers as one pickle (see Put)
        # On the actor wire a small result goes back from this thread at once, unless more
        # calls wait to start (then _deliver sends the results together). It is stored by
        # _deliver, queued before it leaves, so whatever the caller says about it next
        # (release, promote) is handled after the store.
        direct = (
            call.stream.direct
            and blob is not None
            and call.mode == "plain"
            and call.wanted
            and not call.promote
            and self._not_started == 0
        )
        with self._done_lock:
            self._done.append((call, value, blob, direct))
            first = len(self._done) == 1
        if first:
            self.worker.loop.add_callback(self._deliver)
        if direct:
            call.stream.send({"op": "result", "key": call.key, "blob": blob})

    def _deliver(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
        stored = dx.worker_store(
            self.worker, {c.key: value for c, value, _, _ in done if c.wanted and c.stream.open}
        )
        replies: dict[CallerStream, list[dict[str, Any]]] = {}
        for call, value, blob, sent in done:
            call.state = "done"
            call.finished.set()
            _calls.pop(call.key, None)
            if call.key not in stored:
                continue  # the caller dropped it, or left
            if blob is not None and not call.promote:
                call.stream.held.add(call.key)
                if not sent:
                    reply = {"op": "result", "key": call.key, "blob": blob}
                    replies.setdefault(call.stream, []).append(reply)
            else:  # to publish (also if the caller passed the ref on while its result flew)
                publish_value(self.worker, call.stream.client, call.key, value, blob)
        for stream, msgs in replies.items():
            stream.send_many(msgs)
        if self.unreferenced:
            self.maybe_end()

    # -- cancel and stop -----------------------------------------------------------------------

    def cancel(self, call: HostedCall) -> None:
        """On the worker's loop: as Ray's cancel of an actor call (see ``_client.cancel``)."""
        if call.cancelled or call.state == "done":
            return
        call.cancelled = True
        if call in self.queue:
            self.queue.remove(call)
            call.stream.reply_error(call, self._cancelled_before(call))
        elif self.is_async and call.mode == "plain" and self.loop is not None:
            # An async method: CancelledError in its coroutine, as Ray does (or, still waiting
            # for its turn, it never runs); _run_async replies.
            self.loop.call_soon_threadsafe(call.future.cancel)
        elif call.state == "submitted" and call.future.cancel():  # in the pool, not started
            if call.mode == "plain":  # never reaches _run_sync: not waiting to start any more
                with self._count_lock:
                    self._not_started -= 1
            call.stream.reply_error(call, self._cancelled_before(call))
        # Otherwise it runs on: a threaded method to its end (its get then raises), a
        # generator to its next yield.
        if call.producer is not None:
            with call.producer.cond:
                call.producer.cond.notify_all()  # a paused producer sees it at once

    def _cancelled_before(self, call: HostedCall) -> TaskCancelledError:
        if self.is_async:
            return TaskCancelledError(
                None,
                f"The task {call.key} is canceled from an actor {self.actor_id} before it "
                "executes.",
            )
        return TaskCancelledError(None, f"Task: {call.key} was cancelled.")

    def maybe_end(self) -> None:
        """End the actor once no handle is left anywhere, every caller that sent calls has
        said it holds none (its ``drop`` comes after its calls, on the same connection) and
        those calls have run: as Ray ends an actor that went out of scope."""
        if not self.unreferenced or self.callers or self.queue:
            return
        if any(c.host is self for c in _calls.values()):
            return  # called again as the last one finishes
        reason = "all references to the actor were removed"
        if _hosts.get(self.actor_id) is self:
            del _hosts[self.actor_id]
        _dead[self.actor_id] = reason
        self.stop(reason)
        msg = {"op": ACTOR_OP, "actor": self.actor_id, "alive": False, "reason": reason}
        dx.worker_send(self.worker, msg)

    def stop(self, reason: str) -> None:
        """Killed: no call starts any more; queued ones fail (running ones cannot be stopped:
        their results are discarded, the callers' refs fail with ``ActorDiedError``)."""
        error = ActorDiedError(died_message(self.actor_id, reason))
        while self.queue:
            call = self.queue.popleft()
            call.stream.reply_error(call, error)
        for call in [c for c in _calls.values() if c.host is self]:
            call.cancelled = True
            call.wanted = False
            call.finished.set()
        for pool in self.executors.values():
            pool.shutdown(wait=False, cancel_futures=True)
        if self.generators is not None:
            self.generators.shutdown(wait=False, cancel_futures=True)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _method(instance: Any, name: str) -> Callable[..., Any]:
    """``instance.name`` looked up on its class, as Ray does: an instance attribute of the same
    name never shadows a method."""
    attr = inspect.getattr_static(type(instance), name)
    if hasattr(attr, "__get__"):
        return attr.__get__(instance, type(instance))  # type: ignore[no-any-return]
    return attr  # type: ignore[no-any-return]


def _enter_context(ctx: contextvars.Context) -> None:
    # ThreadPoolExecutor threads start empty; give them the worker's context variables.
    for var, value in ctx.items():
        var.set(value)


def died_message(actor_id: str, reason: str) -> str:
    """Ray's wording for a call to a dead actor."""
    return (
        "The actor died unexpectedly before finishing this task.\n"
        f"\tactor_id: {actor_id}\n"
        f"The actor is dead because {reason}."
    )


# --------------------------------------------------------------------- creation and killing


def create_actor(
    actor_id: str,
    cls_blob: bytes,
    concurrency: dict[str, int],
    is_async: bool,
    job: Job,
    packed: bytes | None,
    *deps: Any,
) -> str:
    """The Dask task that creates an actor on this worker; returns the worker's address.

    ``job``: its creator's namespace (the actor's, for the calls and lookups it makes) and
    the runtime_env its constructor and every method run in."""
    worker = get_worker()
    check_scheduler(worker)
    ctx = contextvars.copy_context()
    ctx.run(current_actor.set, actor_id)
    ctx.run(current_job.set, job)
    cls = None
    try:
        with applied(job.env, worker):
            cls, filename = cloudpickle.loads(cls_blob)
            with_code_file(cls, filename)  # tracebacks in its methods show the user's lines
            args, kwargs = unpack_args(packed, deps)
            instance = ctx.run(cls, *args, **kwargs)
    except Exception as exc:
        if isinstance(exc, RuntimeEnvSetupError):
            error: BaseException = exc
        else:
            name = f"{getattr(cls, '__name__', 'actor')}.__init__"
            error = RayTaskError.from_exception(exc, name)
        worker.loop.add_callback(
            _creation_failed, actor_id, f"an error was raised in its creation task: {exc!r}"
        )
        raise error from None
    host = ActorHost(actor_id, instance, concurrency, is_async, ctx, worker)
    host.env = job.env
    worker.loop.add_callback(_created, worker, actor_id, host)
    return worker.address


def _created(worker: Any, actor_id: str, host: ActorHost) -> None:
    install(worker)
    if actor_id in _dead:  # killed before it was created
        host.stop(_dead[actor_id])
        return
    _hosts[actor_id] = host
    dx.worker_send(worker, {"op": ACTOR_OP, "actor": actor_id, "alive": True})
    for call in _waiting.pop(actor_id, []):
        if call.stream.open:
            host.enqueue(call)


def _creation_failed(actor_id: str, reason: str) -> None:
    _dead[actor_id] = reason
    error = ActorDiedError(died_message(actor_id, reason))
    for call in _waiting.pop(actor_id, []):
        call.stream.reply_error(call, error)


def kill_actor(actor_id: str, reason: str, dask_worker: Any = None) -> None:
    """Run by ``Client.run`` on the actor's worker (on its loop)."""
    _dead[actor_id] = reason
    host = _hosts.pop(actor_id, None)
    if host is not None:
        host.stop(reason)
    _creation_failed(actor_id, reason)
    if dask_worker is not None:
        dx.worker_send(dask_worker, {"op": ACTOR_OP, "actor": actor_id, "alive": False})
