"""The caller's half of direct actor calls: one connection per (client, worker) carrying calls
to the actors on that worker, and the results coming back. Runs in the caller's process (the
driver, or a worker whose task calls actors); ``_worker.actor_host`` is the other half and
documents the messages.

The connection is the actor wire (``actor_wire``: calls written from the calling thread, results
read by a thread of its own, which hands a small result straight to a ``get`` waiting in another
thread) when the worker offers one and it can be reached; otherwise Dask's comm layer (a
``BatchedSend``, read on the client's loop). Either way, what a reply changes (the ref's future,
the pending calls) is changed on the client's loop.

A direct call's ref is an ``ObjectRef`` like any other, on a key the scheduler does not know
until it must: the connection owns it (``_objects.promotion``). Its small result comes inline
on the connection; dropping the ref sends ``release`` to the host instead of the scheduler; and
passing the ref on first promotes it to a real key.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed import Client
from distributed.comm import CommClosedError, connect

from .. import _dask_internals as dx
from .._objects import genstate, promotion
from .._objects.refs import deliver_result, early_result, has_result
from .._protocol import ACTOR_STREAM_OP, WORKERS_OP, Key, Packed, as_key
from .._waiting import wakes
from .._worker.actor_host import install
from ..exceptions import ActorDiedError, ActorUnavailableError, TaskCancelledError
from . import shared_memory
from .actor_wire import WireLink
from .shared_memory import SegmentPool

logger = logging.getLogger("daskgen")

SEND_INTERVAL = 0.001  # s: batching of calls on daskgen's own connection
DIRECT = "\x00direct"  # the "actor" of plain task calls sent straight to a worker (``direct``)

_channels: dict[tuple[int, str], Channel] = {}
_channels_lock = threading.Lock()
restartable: set[str] = set()  # actors with max_restarts (calls in flight: unavailable)
moved: dict[str, str] = {}  # actor id -> the worker it was restarted on
# Workers whose connection closed under us (it died, most likely), address -> when: new actors
# are not placed there while the scheduler has not noticed yet (see actors._workers).
closed_under_us: dict[str, float] = {}
GONE_FOR_S = 30.0  # after this, a worker the scheduler still lists is tried again

# max_task_retries: calls to such actors sent without a result yet, key -> [the call's message,
# tries left (-1: no limit)]; and the calls of an actor being restarted, waiting to be sent to
# its new worker: actor -> [(client, key, on_failed)].
retries: dict[Key, list[Any]] = {}
_parked: dict[str, list[tuple[Client, Key, Callable[[Any], None] | None]]] = {}
PARK_S = 60.0  # s: bound on waiting for the scheduler to say where the actor restarts


def _retry_later(ch: Channel, key: Key, actor: str, on_failed: Any) -> bool:
    """Keep a call to a restarting actor to send it again once it is back, if it has tries
    left (as Ray's max_task_retries); False: it fails now."""
    entry = retries.get(key)
    if entry is None or entry[1] == 0:
        retries.pop(key, None)
        return False
    if entry[1] > 0:
        entry[1] -= 1
    first = actor not in _parked
    _parked.setdefault(actor, []).append((ch.client, key, on_failed))
    where = moved.get(actor)
    if where is not None and where != ch.address:
        resend_parked(actor, where)
    elif first and ch.client.loop is not None:
        ch.client.loop.call_later(PARK_S, fail_parked, actor, None)
    return True


def resend_parked(actor: str, worker: str) -> None:
    """The actor is being restarted on ``worker``: send its parked calls there (they wait
    there for the new instance)."""
    for client, key, on_failed in _parked.pop(actor, []):
        entry = retries.get(key)
        if entry is not None:
            channel(client, worker).call(key, {**entry[0], "wait": False}, on_failed, actor)


def fail_parked(actor: str, error: BaseException | None) -> None:
    """The actor died for good (or never came back within ``PARK_S``)."""
    why = error or unavailable(actor, f"it did not come back within {PARK_S:.0f} s")
    for client, key, on_failed in _parked.pop(actor, []):
        retries.pop(key, None)
        _fail_key(client, key, on_failed, why)


def _fail_key(client: Client, key: Key, on_failed: Any, error: Any) -> None:
    promotion.disown(key)
    if on_failed is not None:
        on_failed(error)
    else:
        dx.key_set_error(client, key, error or TaskCancelledError())


def unavailable(actor: str, why: str) -> ActorUnavailableError:
    """Ray's error for a call in flight when a restartable actor's worker went away."""
    return ActorUnavailableError(
        f"The actor {actor} is unavailable: {why}. The task may or may not have been executed "
        "on the actor."
    )


def channel(client: Client, address: str) -> Channel:
    """This client's channel to the worker at ``address`` (made on first use)."""
    with _channels_lock:
        ch = _channels.get((id(client), address))
        if ch is None or ch.closed:
            ch = _channels[(id(client), address)] = Channel(client, address)
        return ch


def _connect_to(client: Client, address: str) -> None:
    """``genstate.connect_to``: this client's connection to ``address``, opened if need be
    (on the client's loop). Not to a worker whose connection just closed under us."""
    if address in closed_under_us:
        return
    ch = _channels.get((id(client), address))
    if ch is None or (ch._link is None and not ch._connecting):
        channel(client, address).connect()


genstate.connect_to = _connect_to


def close_channels(client: Client) -> None:
    """The session ends: close ``client``'s actor connections (a wire's socket and thread
    too), so that nothing of this caller is left on the workers."""
    with _channels_lock:
        mine = [k for k in _channels if k[0] == id(client)]
        closing = [_channels.pop(k) for k in mine]
    for ch in closing:
        ch._shut(ActorDiedError("The actor is unreachable: daskgen was shut down."))
        ch._wake_all()


def _on_loop(client: Client, fn: Callable[..., Any], *args: Any) -> bool:
    """``dx.on_client_loop`` from any thread; False if the client is closing (its actor
    calls end with it)."""
    try:
        dx.on_client_loop(client, fn, *args)
    except Exception:
        return False
    return True


class _DaskLink:
    """A channel's connection over Dask's comm layer: messages from any thread go, in order,
    through the client's loop to a ``BatchedSend``."""

    def __init__(self, client: Client, comm: Any) -> None:
        self.client = client
        self.batched = dx.batched_send(comm, SEND_INTERVAL)

    def send_many(self, msgs: list[dict[str, Any]]) -> None:
        _on_loop(self.client, self._send, msgs)

    def _send(self, msgs: list[dict[str, Any]]) -> None:
        try:
            for msg in msgs:
                self.batched.send(msg)
        except CommClosedError:
            pass  # the reader sees the connection closed and fails the calls on it

    def close(self) -> None:
        self.batched.abort()


_Pending = tuple[str, Callable[[Any], None] | None, Any]


class _Waiter:
    """A thread in ``get`` waiting for the results of some direct calls (``wait_settled``)."""

    __slots__ = ("left", "event")

    def __init__(self, left: int) -> None:
        self.left = left
        self.event = threading.Event()


class _Fetch:
    """One ``fetch`` waiting for its values."""

    __slots__ = ("done", "values")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.values: dict[Key, Any] = {}


_fetch_numbers = itertools.count(1)


class Channel:
    """Calls to the actors of one worker, and their results (see the module's docstring);
    also the large values a ``get`` fetches from that worker (``fetch``)."""

    def __init__(self, client: Client, address: str) -> None:
        self.client = client
        self.address = address
        # Calls sent without a result yet: key -> (actor, what to tell if it fails, what the
        # call keeps alive until then: its handle's claim on the actor).
        self.pending: dict[Key, _Pending] = {}
        self._direct: set[Key] = set()  # those of them that are plain task calls (DIRECT)
        self.closed = False
        self.failure: BaseException | None = None
        self._outbox: list[dict[str, Any]] = []  # sent before the connection was open
        self._burst: list[dict[str, Any]] = []  # sent while other calls are in flight (wire)
        self._lock = threading.Lock()  # pending calls and waiters (never held across I/O)
        self._send_lock = threading.Lock()  # the order of messages from any thread
        self._link: WireLink | _DaskLink | None = None
        self._connecting = False
        self._waiters: dict[Key, list[_Waiter]] = {}
        # Results the wire's reader took out of ``pending`` (get may return them at once),
        # still to be delivered on the client's loop.
        self._arrived: dict[Key, _Pending] = {}
        self._fetches: dict[int, _Fetch] = {}  # large values asked for (see ``fetch``)
        # Shared memory lent to the worker for stored arguments, where it is on this host.
        self._segments = SegmentPool() if shared_memory.AVAILABLE else None

    def pending_for(self, actor: str) -> int:
        """Calls to ``actor`` sent on this channel without their result yet."""
        return sum(1 for entry in list(self.pending.values()) if entry[0] == actor)

    def direct_in_flight(self) -> bool:
        """Whether a plain task call sent on this channel has no result yet."""
        return bool(self._direct)

    def _take(self, key: Key) -> _Pending | None:
        """Take ``key`` out of the calls without a result (any thread, under ``_lock``, or on
        the client's loop)."""
        self._direct.discard(key)
        return self.pending.pop(key, None)

    # -- sending (any thread) ----------------------------------------------------------------

    def call(
        self,
        key: Key,
        msg: dict[str, Any],
        on_failed: Callable[[Any], None] | None,
        actor: str,
        keep: Any = None,
        owned: bool = True,
    ) -> None:
        """Send a call to ``actor``; its result arrives for ``key``. ``on_failed(error)`` is
        told if the call ends without a result on the scheduler's path (a generator call).
        ``keep`` (the handle's claim on the actor) lives until then: a handle dropped right
        after a call cannot end the actor before the call reaches it, as in Ray. ``owned``
        False: the scheduler knows ``key`` already (a direct task call's, see ``direct``)."""
        with self._lock:
            if self.closed:
                failure = self.failure
            else:
                failure = None
                self.pending[key] = (actor, on_failed, keep)
                if actor == DIRECT:
                    self._direct.add(key)
                if owned:
                    promotion.own(key, self)  # the scheduler does not know the key yet
        if failure is not None:
            dx.on_client_loop(self.client, self._fail, key, on_failed, failure)
            return
        self.send(msg)

    def send(self, msg: dict[str, Any]) -> None:
        """Send ``msg`` (any thread). On the wire, a lone call is written by this very thread
        (no hop: what a sequential caller waits on); while other calls are in flight, the
        messages sent meanwhile go together in one write from the client's loop (a burst of
        calls costs one system call per batch, not one per call)."""
        with self._send_lock:
            if self.closed:
                return
            link = self._link
            if isinstance(link, WireLink):
                if not self._burst and len(self.pending) <= 1:
                    link.send_many([msg])
                    return
                self._burst.append(msg)
                if len(self._burst) > 1:
                    return  # a flush is on its way
                flush = self._flush_burst
            elif link is not None:
                link.send_many([msg])
                return
            else:
                self._outbox.append(msg)
                if len(self._outbox) > 1:
                    return
                flush = self._open
        _on_loop(self.client, flush)

    def store(self, key: Key, packed: Packed) -> None:
        """Send a call's stored arguments (``_client.stored_args``), their buffers the
        caller's own memory. To a worker on this host: copied into shared memory it maps
        (``shared_memory``), unless none is free. Else written at once from this thread where
        the wire is open and idle (the kernel has them when this returns), or copied and
        queued (as bytes, which Dask's comm layer carries too).

        Why not a copy written by a thread of the channel, so the caller goes on and the
        stores to different workers cross at once: the machine was busy anyway (200 calls of
        10 MB: ~93% of both cores), and the copy cost more (~2.8 ms per 10 MB in the caller,
        1.2-1.5 s for the 200 against 1.0-1.2 s)."""
        msg: dict[str, Any] = {"op": "store", "key": key, "chunks": [packed.blob]}
        with self._send_lock:
            link = self._link
            if isinstance(link, WireLink) and not self._burst and not self.closed:
                lent = None
                if link.local and self._segments is not None and packed.buffers:
                    lent = self._segments.lend(packed.buffers)
                if lent is not None:
                    msg.update(lent)
                else:
                    msg["chunks"] += list(packed.buffers)
                link.send_many([msg])
                return
        msg["chunks"] += [bytes(memoryview(b).cast("B")) for b in packed.buffers]
        self.send(msg)

    def ask(self, keys: list[Key]) -> tuple[int, _Fetch] | None:
        """Ask the worker for the values of ``keys`` (any thread; see ``_client.fetch``);
        ``wait_fetched`` then returns them. None if the channel is closed."""
        request = _Fetch()
        with self._lock:
            if self.closed:
                return None
            number = next(_fetch_numbers)
            self._fetches[number] = request
        self.send({"op": "fetch", "id": number, "keys": keys})
        return number, request

    def wait_fetched(self, asked: tuple[int, _Fetch], timeout: float) -> dict[Key, Any]:
        """The values the worker sent, waiting up to ``timeout`` s (not on the client's loop).
        What it does not hold or cannot send, or everything if the channel closes or no answer
        comes in time, is left out: the caller's Dask gather fetches it."""
        number, request = asked
        if not request.done.wait(max(timeout, 0)):
            with self._lock:
                self._fetches.pop(number, None)
            return {}
        return request.values

    def _fetched(self, msg: dict[str, Any]) -> None:
        """The worker's answer to a ``fetch`` (the wire's reader thread, or the client's loop
        on Dask's comm layer): each value is built on the chunks it was received into."""
        with self._lock:
            request = self._fetches.pop(msg["id"], None)
        if request is None:
            return  # it timed out (or the channel closed): its get asked Dask instead
        chunks = msg.get("chunks", [])
        at = 0
        for key, count in msg["parts"]:
            try:
                request.values[as_key(key)] = pickle.loads(
                    chunks[at], buffers=chunks[at + 1 : at + count]
                )
            except Exception:  # its class cannot be imported here...: Dask's gather says why
                logger.debug("daskgen: cannot unpickle fetched %r", key, exc_info=True)
            at += count
        request.done.set()

    def _flush_burst(self) -> None:
        with self._send_lock:
            msgs, self._burst = self._burst, []
            if msgs and self._link is not None and not self.closed:
                self._link.send_many(msgs)

    def connect(self) -> None:
        """On the client's loop: open the connection now, with nothing to send yet."""
        if not self.closed:
            self._open()

    def _open(self) -> None:
        """On the client's loop: open the connection once (the outbox goes when it is)."""
        if self._link is None and not self._connecting:
            self._connecting = True
            asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        try:
            # A worker the scheduler does not know (it left, or the scheduler was restarted)
            # is not tried: Dask would retry connecting to it for its connect timeout.
            found = await getattr(self.client.scheduler, WORKERS_OP)()
        except Exception as exc:
            found = exc
        if not isinstance(found, dict) or self.address not in found["able"]:
            self._lost(
                ActorDiedError(
                    "The actor died unexpectedly before finishing this task.\n"
                    f"The actor is dead because its worker {self.address} is not in the cluster "
                    "of the Dask scheduler any more (it left, or the scheduler was restarted)."
                )
            )
            return
        try:
            # The handler is registered by the actor's creation task; registering it here too
            # (idempotent) means a caller never races a creation still under way.
            contacts = await self.client.run(
                install, workers=[self.address], on_error="raise", asynchronous=True
            )
            link: WireLink | _DaskLink | None = await self._open_wire(contacts.get(self.address))
            if link is None:
                comm = await connect(self.address, **self.client.connection_args)
                comm.name = "daskgen->actors"
                await comm.write({"op": ACTOR_STREAM_OP, "client": self.client.id, "reply": False})
                link = _DaskLink(self.client, comm)
                asyncio.ensure_future(self._read(comm))
        except Exception as exc:
            self._lost(
                ActorDiedError(
                    f"The actor's worker {self.address} cannot be reached for actor calls: "
                    f"{exc!r}. Is daskgen installed there (the same version as here)?"
                )
            )
            return
        assert link is not None
        with self._send_lock:
            self._connecting = False
            if self.closed:
                link.close()
                return
            self._link = link
            msgs, self._outbox = self._outbox, []
            if msgs:
                link.send_many(msgs)

    async def _open_wire(self, contact: Any) -> WireLink | None:
        """The actor wire to the worker, if it offers one and it answers (else None: Dask's
        comm layer carries the calls)."""
        if contact is None:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, WireLink, contact, self.client.id, self._on_wire_replies, self._on_wire_end
            )
        except OSError as exc:
            logger.warning(
                "daskgen: the actor wire of %s (port %s) cannot be reached (%r); actor calls "
                "to it take Dask's comm layer",
                self.address,
                contact[1],
                exc,
            )
            return None

    # -- receiving (on the client's loop) -----------------------------------------------------

    async def _read(self, comm: Any) -> None:
        """Dask's comm: read the replies on the client's loop."""
        try:
            while True:
                self._on_replies(await comm.read())
        except (CommClosedError, OSError):
            pass
        except Exception:
            logger.exception("daskgen: bad reply on the actor connection to %s", self.address)
        self._worker_closed()

    def _worker_closed(self) -> None:
        """On the client's loop: the worker's end of the connection closed (unless this side
        closed it): remember the worker as gone, and fail the calls on the connection."""
        if self.closed:
            return
        closed_under_us[self.address] = time.monotonic()
        self._lost(
            ActorDiedError(
                "The actor died unexpectedly before finishing this task.\n"
                f"The actor is dead because its worker {self.address} closed the connection "
                "(it left the cluster, or its process died)."
            )
        )

    def _on_wire_replies(self, msgs: list[dict[str, Any]]) -> None:
        """The wire's reader thread: small results go straight to the threads waiting in
        ``get`` for them; the rest of each reply is handled on the client's loop."""
        if any(msg["op"] in ("fetched", "shm-free") for msg in msgs):
            for msg in msgs:
                if msg["op"] == "fetched":
                    self._fetched(msg)
                elif msg["op"] == "shm-free" and self._segments is not None:
                    self._segments.returned(msg["numbers"])
            msgs = [msg for msg in msgs if msg["op"] not in ("fetched", "shm-free")]
            if not msgs:
                return
        arrived = []
        with self._lock:
            for msg in msgs:
                if msg["op"] == "result":
                    key = as_key(msg["key"])
                    entry = self._take(key)
                    if entry is not None:
                        self._arrived[key] = entry
                        early_result(key, msg["blob"])
                        arrived.append(key)
        if arrived:
            self._wake(arrived)
        _on_loop(self.client, self._on_replies, msgs)

    def _on_wire_end(self, error: BaseException | None) -> None:
        """The wire's reader thread: the connection ended."""
        if self.closed:
            return  # closed from this side (_shut)
        if error is not None:
            logger.error("daskgen: bad reply on the actor wire to %s: %r", self.address, error)
        if not _on_loop(self.client, self._worker_closed):
            self._wake_all()  # nothing waits for the client's loop any more

    def _on_replies(self, msgs: list[dict[str, Any]]) -> None:
        keys = []
        for msg in msgs:
            if msg["op"] == "fetched":  # on Dask's comm layer: nothing was sent
                self._fetched(msg)
                continue
            if msg["op"] == "yields":  # a streaming generator's, ahead of the scheduler's
                genstate.on_early_yields(self.client, msg["task"], msg["items"])
                continue
            self._on_reply(msg)
            keys.append(as_key(msg["key"]))
        self._wake(keys)

    def _on_reply(self, msg: dict[str, Any]) -> None:
        key = as_key(msg["key"])
        if retries:
            retries.pop(key, None)
        if msg["op"] == "result":
            entry = self._take(key) or self._arrived.pop(key, None)
            if entry is None:
                return  # it failed already (its actor died), or its ref was dropped
            # A direct task call's Dask task reports its own end (its value is in the cluster
            # only then): the ref has its value now, its future finishes with that report.
            deliver_result(self.client, key, msg["blob"], finish=entry[0] != DIRECT)
        elif msg["op"] == "busy":  # a direct task call the worker had no slot for: its Dask
            entry = self._take(key)  # task runs it there, once it has one (``direct``)
            if entry is not None:
                entry[2]()
        elif msg["op"] in ("done", "late"):  # a direct task call whose large result stays
            self._take(key)  # there, or whose Dask task came first and runs it (``direct``)
        elif msg["op"] == "failed":  # a generator call that ended without its outcome
            entry = self._take(key)
            promotion.disown(key)
            blob = msg.get("blob")
            if entry is not None:
                self._fail(key, entry[1], pickle.loads(blob) if blob else None)

    def completed(self, key: Key) -> None:
        """The scheduler announced ``key`` (published by the host): it is a real key now."""
        self._take(key)
        self._arrived.pop(key, None)
        retries.pop(key, None)
        self._wake([key])

    def released(self, key: Key) -> None:
        """The caller dropped the ref of ``key`` (the host is told by the release message)."""
        self._take(key)
        self._arrived.pop(key, None)
        retries.pop(key, None)

    # -- waiting in a thread ------------------------------------------------------------------

    def wait_settled(self, keys: list[Key], timeout: float | None) -> bool:
        """Block this thread until each of ``keys`` (calls on this channel) has its result
        or has failed, or ``timeout`` s passed (False). Cut short by an interrupt of the task
        this thread runs (``_waiting.wakes``); the caller then looks at the refs as usual."""
        with self._lock:
            left = [k for k in keys if k in self.pending and not has_result(k)]
            if not left:
                return True
            waiter = _Waiter(len(left))
            for key in left:
                self._waiters.setdefault(key, []).append(waiter)
        try:
            with wakes(waiter.event.set):
                return waiter.event.wait(timeout)
        finally:
            with self._lock:
                for key in left:
                    waiting = self._waiters.get(key)
                    if waiting is not None and waiter in waiting:
                        waiting.remove(waiter)
                        if not waiting:
                            del self._waiters[key]

    def _wake_all(self) -> None:
        self._wake(list(self._waiters))

    def _wake(self, keys: list[Key]) -> None:
        """``keys`` have their result or failed (any thread): wake who waits for them."""
        if not self._waiters:
            return
        with self._lock:
            for key in keys:
                for waiter in self._waiters.pop(key, ()):
                    waiter.left -= 1
                    if waiter.left <= 0:
                        waiter.event.set()

    def _fail(self, key: Key, on_failed: Callable[[Any], None] | None, error: Any) -> None:
        _fail_key(self.client, key, on_failed, error)
        self._wake([key])

    def _lost(self, error: BaseException) -> None:
        """The connection is gone: every call on it without a result fails with ``error``."""
        pending = self._shut(error)
        with _channels_lock:
            if _channels.get((id(self.client), self.address)) is self:
                del _channels[(id(self.client), self.address)]
        for key, (actor, on_failed, _) in pending.items():
            if actor in restartable:
                if not _retry_later(self, key, actor, on_failed):
                    why = f"its worker {self.address} left"
                    self._fail(key, on_failed, unavailable(actor, why))
            else:
                self._fail(key, on_failed, error)
        promotion.owner_lost(self, error)
        self._wake_all()  # those not failed above (retried later) look again

    def _shut(self, error: BaseException) -> dict[Key, _Pending]:
        """Close the channel: later calls fail with ``error``; returns the calls that were
        still without a result."""
        with self._send_lock, self._lock:
            self.closed = True
            self.failure = error
            pending, self.pending = self.pending, {}
            self._direct.clear()
            self._outbox.clear()
            link, self._link = self._link, None
            fetches, self._fetches = self._fetches, {}
        if self._segments is not None:
            self._segments.close()
        if link is not None:
            link.close()
        for request in fetches.values():
            request.done.set()  # with nothing: their gets ask Dask
        return pending

    def fail_actor(self, actor: str, error: BaseException) -> None:
        """The actor died (the scheduler says so, or it was killed): its calls without a
        result fail (on the client's loop)."""
        for key in [k for k, entry in self.pending.items() if entry[0] == actor]:
            on_failed = self.pending.pop(key)[1]
            if isinstance(error, ActorUnavailableError) and _retry_later(
                self, key, actor, on_failed
            ):
                self._wake([key])  # a get waiting for it waits for the retry instead
                continue
            self._fail(key, on_failed, error)


def cancel_actor_call(key: Key, force: bool) -> bool:
    """``cancel()`` of a direct actor call still without its result: ask its host (see
    ``ActorHost.cancel``). False if ``key`` is no such call (a direct task call's key is a
    Dask task's: it is cancelled as any task is)."""
    ch = promotion.owner_of(key)
    if not isinstance(ch, Channel) or key not in ch.pending:
        return False
    if force:
        raise ValueError("force=True is not supported for actor tasks.")
    ch.send({"op": "cancel", "key": key})
    return True
