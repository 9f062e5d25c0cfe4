"""A direct line between each worker and the scheduler: announcements and large values.

Why: on daskgen's embedded cluster, a lone yield took ~1.2 ms from the generator to its caller,
and ~0.6 ms of that was one Dask message from the worker to the scheduler (measured with a bare
message on the worker's batched stream: waking the stream's writer, framing, Tornado's reads on
the scheduler side, each a few turns of the event loop, run cold after the process idled). The
same message over a Unix socket, read by an ``asyncio.Protocol`` on the scheduler's loop, took
~0.12 ms. So the embedded cluster's workers send the yield announcements and inline results
(``daskgen-publish``, ``daskgen-result``) this way; everything else stays on Dask's streams.

On a cluster daskgen connects to, the same lane runs over a TCP port of daskgen's own on the
scheduler's host (and an abstract Unix socket there, for workers on that host), opened by
``init`` with daskgen's scheduler plugin (:class:`FastLaneScheduler` without a path). A worker
asks the scheduler where it listens (``LANE_OP``, over Dask's comm, so over the cluster's own
security: the token comes that way) once daskgen first sends from it, and connects in the
background; until then, and for any producer that began on it, Dask's stream carries the
messages. Measured on a real cluster here (same process A/B): yield -> consumer median
~1.8-2.0 -> ~1.4-1.6 ms, sequential round trips ~130 -> ~135-150/s. TLS schedulers offer no
lane (it is plain TCP).

The driver also fetches large values (``FETCH_MIN_BYTES`` and up) for ``get`` this way: the
scheduler's end asks the holding worker, which sends the value pickled with its buffers out of
band, and the driver receives each buffer in place and builds the value on it. An 8 MB array
crosses a local TCP socket in ~3-3.5 ms here and a Unix socket in ~1.3-2 ms; with Dask's
gather on top, 8 MB yields streamed to the driver went from ~1.1-2.1 to ~2.1-3.4 GB/s. If the
lane cannot serve a value (not there any more, not picklable, the lane closed), Dask's gather
fetches it as before.

Each message goes to the same scheduler stream handler Dask would have called, with the sender
as ``worker``, and only while that worker is still registered (Dask stops reading a removed
worker's stream). The socket lives in a private directory (mode 0700) and a connection is
accepted only after it presents the cluster's random token, before anything is unpickled.

Ordering. Messages on the lane keep their order, but may overtake or be overtaken by the
worker's batched stream, which carries the generator task's completion. So the scheduler
acknowledges each lane message once handled, and a producer that used the lane waits (in its
own thread) until its last message is acknowledged before its task returns: the completion
report can never arrive before a yield. A producer keeps to one lane: if the lane closes, it
falls back to the batched stream only when nothing it sent is unacknowledged; otherwise its task
fails with an error saying so (those yields may be lost), rather than end short.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import itertools
import logging
import os
import pickle
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

from distributed import SchedulerPlugin, Worker

from .. import _buffers
from .. import _dask_internals as dx
from .._protocol import FETCH_MIN_BYTES, LANE_OP, PUBLISH_OP, RESULT_OP, dumps

logger = logging.getLogger("daskgen")

# Messages the lane may carry; anything else is dropped (and the connection closed).
LANE_OPS = frozenset({PUBLISH_OP, RESULT_OP})
_HEADER = struct.Struct("!Q")  # length of the frame that follows
TOKEN_BYTES = 32
# Frames up to this size are cut from one rolling buffer; larger ones (the buffers of a fetched
# value) are received straight into a buffer of their own, which the value then lives in.
SMALL_FRAME = 1 << 16
SOCKET_BUFFER = 8 << 20  # bytes: a large value passes in few writes
WRITE_CHUNK = 1 << 20  # large buffers are written in pieces of this size
_MISSING = object()  # a fetch the lane could not serve: Dask's own gather takes over


class LaneClosed(ConnectionError):
    """The lane closed while some of a producer's messages were not acknowledged."""


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def _allocate(size: int) -> memoryview:
    """A writable buffer for a received frame: not zero-filled, and reused once nothing refers
    to it (``_buffers``, as the wire's chunks are)."""
    return _buffers.take(size).data.cast("B")


def _widen(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


class _Frames(asyncio.BufferedProtocol):
    """Reads length-prefixed frames into ``on_frame``; subclasses are the lane's two ends.

    A ``BufferedProtocol``, so that a large frame is received in place: the socket writes into
    the very buffer the fetched value is then built on, with no copy in between.
    """

    transport: Any = None

    def __init__(self) -> None:
        self._buffer = bytearray(SMALL_FRAME)
        self._start = self._end = 0  # unparsed bytes of the rolling buffer
        self._large: memoryview | None = None  # a large frame being received
        self._large_got = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        _widen(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large is not None:
            return self._large[self._large_got :]
        if self._end == len(self._buffer):  # room at the end: move what is left to the front
            left = self._end - self._start
            self._buffer[:left] = self._buffer[self._start : self._end]
            self._start, self._end = 0, left
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._large_got += nbytes
            if self._large_got == len(self._large):
                frame, self._large = self._large, None
                self.on_frame(frame)
        else:
            self._end += nbytes
            self._parse()
        self.after_read()

    def _parse(self) -> None:
        buffer = self._buffer
        while self._end - self._start >= _HEADER.size and not self.transport.is_closing():
            (size,) = _HEADER.unpack_from(buffer, self._start)
            body = self._start + _HEADER.size
            if self._end - body >= size:
                self._start = body + size
                self.on_frame(bytes(buffer[body : self._start]))
            elif size > SMALL_FRAME - _HEADER.size:
                if not self.accepts_large():
                    self.transport.close()
                    return
                large = _allocate(size)
                have = self._end - body
                large[:have] = buffer[body : self._end]
                self._large, self._large_got = large, have
                self._start = self._end = 0
                return
            else:
                break  # the rest of this frame is still on its way
        if self._start == self._end:
            self._start = self._end = 0

    def on_frame(self, frame: bytes | memoryview) -> None:
        raise NotImplementedError

    def accepts_large(self) -> bool:
        return True

    def after_read(self) -> None:
        """Called once per read, after its frames."""


# ---------------------------------------------------------------------------- scheduler side


class _SchedulerEnd(_Frames):
    """One worker's connection, on the scheduler's loop."""

    def __init__(self, lane: FastLaneScheduler) -> None:
        super().__init__()
        self.lane = lane
        self.worker: str | None = None  # set by the hello frame
        self.handled = 0
        self._acked = 0
        self._requests = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}  # fetches, by request number
        self._receiving: tuple[int, bytes, int, list[memoryview]] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.lane.ends.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lane.ends.discard(self)
        for future in self._pending.values():
            if not future.done():
                future.set_result(_MISSING)
        self._pending.clear()

    def on_frame(self, frame: bytes | memoryview) -> None:
        if self.worker is None:
            if not self._hello(bytes(frame)):
                self.transport.close()
            return
        if self._receiving is not None:
            self._buffer_of_value(frame)
            return
        try:
            msg = pickle.loads(frame)
        except Exception:
            logger.exception("daskgen: bad fast-lane frame from %s", self.worker)
            self.transport.close()
            return
        if isinstance(msg, tuple):
            try:
                self._value(*msg)
            except Exception:
                logger.exception("daskgen: bad fast-lane reply from %s", self.worker)
                self.transport.close()
        else:
            self._dispatch(msg)
            self.handled += 1

    def accepts_large(self) -> bool:
        return self.worker is not None  # nothing large before the token

    def after_read(self) -> None:
        if self.handled > self._acked and not self.transport.is_closing():
            self._acked = self.handled
            self.transport.write(_frame(pickle.dumps(("ack", self.handled))))

    def _hello(self, frame: bytes) -> bool:
        token, address = frame[:TOKEN_BYTES], frame[TOKEN_BYTES:]
        if not hmac.compare_digest(token, self.lane.token):
            logger.warning("daskgen: refused a fast-lane connection with a wrong token")
            return False
        self.worker = address.decode()
        with self.lane.hellos:
            self.lane.hellos.notify_all()
        return True

    def _dispatch(self, msg: Any) -> None:
        scheduler = self.lane.scheduler
        try:
            op = msg.pop("op")
            if op not in LANE_OPS:
                raise ValueError(f"unexpected message {op!r}")
            if self.worker is None or not dx.scheduler_has_worker(scheduler, self.worker):
                return  # removed: Dask would no longer read its stream either
            dx.scheduler_stream_handler(scheduler, op)(worker=self.worker, **msg)
        except Exception:  # the handlers catch their own errors; this is a broken message
            logger.exception("daskgen: bad fast-lane message from %s", self.worker)
            self.transport.close()

    # -- fetching values (the driver's get) -----------------------------------------------------

    def request(self, key: Any) -> asyncio.Future[Any]:
        """Ask the worker for the value of ``key``: a future of the value, or of ``_MISSING``."""
        number = next(self._requests)
        future = self._pending[number] = asyncio.get_running_loop().create_future()
        self.transport.write(_frame(pickle.dumps(("get", number, key), protocol=5)))
        return future

    def _value(self, kind: str, number: int, found: bool, head: bytes, count: int) -> None:
        if kind != "value":
            raise ValueError(f"unexpected reply {kind!r}")
        if found and count:
            self._receiving = (number, head, count, [])
        else:
            self._settle(number, head if found else None, [])

    def _buffer_of_value(self, frame: bytes | memoryview) -> None:
        assert self._receiving is not None
        number, head, count, buffers = self._receiving
        # Writable, as Dask's own buffers are (a small one was cut from the rolling buffer).
        buffers.append(memoryview(bytearray(frame) if isinstance(frame, bytes) else frame))
        if len(buffers) == count:
            self._receiving = None
            self._settle(number, head, buffers)

    def _settle(self, number: int, head: bytes | None, buffers: list[memoryview]) -> None:
        future = self._pending.pop(number, None)
        if future is None or future.done():
            return
        value: Any = _MISSING
        if head is not None:
            try:
                value = pickle.loads(head, buffers=buffers)
            except Exception:  # Dask's gather then reports it its own way
                logger.debug("daskgen: could not unpickle a fetched value", exc_info=True)
        future.set_result(value)


class FastLaneScheduler(SchedulerPlugin):
    """The scheduler's end of the lanes, on the scheduler's loop: on the embedded cluster a
    Unix socket in a private directory (``path`` and ``token`` given); on a cluster daskgen
    connects to (none given), a TCP port of its own on the scheduler's host and an abstract
    Unix socket for workers on that host, with a fresh token, which workers ask for over
    Dask's comm (``LANE_OP``). A scheduler that is not on ``tcp://`` (TLS) opens neither: its
    workers keep to Dask's streams."""

    name = "daskgen-fast-lane"

    def __init__(self, path: str | None = None, token: bytes | None = None) -> None:
        self.path = path
        self.token = token or os.urandom(TOKEN_BYTES)
        self.scheduler: Any = None
        self.server: Any = None
        self.servers: list[Any] = []  # on a cluster daskgen connects to
        self.where: dict[str, Any] | None = None  # what LANE_OP answers
        self.ends: set[_SchedulerEnd] = set()  # open connections
        self.fetched = 0  # values fetched for the driver
        self.hellos = threading.Condition()  # notified as each worker's connection is accepted

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to a scheduler as what makes it there (its token is made there too)."""
        return FastLaneScheduler, (self.path, None if self.path is None else self.token)

    def wait_connected(self, n: int, timeout: float) -> bool:
        """Whether ``n`` workers are connected, waiting up to ``timeout`` seconds for them (from
        a thread other than the scheduler's loop)."""
        with self.hellos:
            return self.hellos.wait_for(
                lambda: sum(end.worker is not None for end in list(self.ends)) >= n, timeout
            )

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        loop = asyncio.get_running_loop()
        if self.path is not None:
            self.server = await loop.create_unix_server(lambda: _SchedulerEnd(self), self.path)
            return
        dx.scheduler_add_handler(scheduler, LANE_OP, self._contact)
        address = urlsplit(scheduler.address)
        if address.scheme != "tcp" or not address.hostname:
            return
        try:
            tcp = await loop.create_server(lambda: _SchedulerEnd(self), address.hostname, 0)
            self.servers.append(tcp)
            local = None
            if sys.platform.startswith("linux"):
                local = "daskgen-lane-" + os.urandom(16).hex()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind("\0" + local)
                self.servers.append(
                    await loop.create_unix_server(lambda: _SchedulerEnd(self), sock=sock)
                )
        except OSError:
            logger.warning("daskgen: no fast lane on this scheduler", exc_info=True)
            return
        port = tcp.sockets[0].getsockname()[1]
        self.where = {"host": address.hostname, "port": port, "token": self.token, "local": local}

    def _contact(self) -> dict[str, Any] | None:
        return self.where

    async def close(self) -> None:
        for server in [self.server, *self.servers]:
            if server is not None:
                server.close()  # stops listening; the open connections close below
        for end in list(self.ends):
            end.transport.close()
        if self.path is not None:
            shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)

    async def fetch(self, keys: list[Any]) -> dict[Any, Any]:
        """The values of those ``keys`` a connected worker holds, by key (on the scheduler's
        loop); keys it could not serve are left out."""
        ends = {end.worker: end for end in self.ends if end.worker is not None}
        requests = {}
        for key in set(keys):
            for worker in dx.scheduler_holders(self.scheduler, key):
                if worker in ends:
                    requests[key] = ends[worker].request(key)
                    break
        out = {}
        for key, future in requests.items():
            value = await future
            if value is not _MISSING:
                out[key] = value
        self.fetched += len(out)
        return out


def new_lane() -> tuple[str, bytes] | None:
    """A socket path in a fresh private directory and a random token; None where Unix sockets
    are not available (the workers then use Dask's streams only)."""
    if not hasattr(asyncio.AbstractEventLoop, "create_unix_server") or os.name != "posix":
        return None
    directory = tempfile.mkdtemp(prefix="daskgen-")  # mode 0700
    return os.path.join(directory, "lane"), os.urandom(TOKEN_BYTES)


def fetch_large(client: Any, keys: list[Any]) -> dict[Any, Any]:
    """From the driver of the embedded cluster: the values of those ``keys`` (all in memory)
    that are at least ``FETCH_MIN_BYTES``, fetched over the lane; others are left out."""
    scheduler = dx.local_scheduler(client)
    if scheduler is None:
        return {}
    lane = dx.scheduler_plugin(scheduler, FastLaneScheduler.name)
    if not isinstance(lane, FastLaneScheduler):
        return {}
    # Sizes read from this thread only to skip a trip to the loop when nothing is large.
    large = [k for k in keys if dx.scheduler_key_nbytes(scheduler, k) >= FETCH_MIN_BYTES]
    if not large:
        return {}
    try:
        return client.sync(lane.fetch, large)
    except Exception:  # a closing client or loop: Dask's gather reports it properly
        logger.debug("daskgen: fetching by the lane failed", exc_info=True)
        return {}


# ------------------------------------------------------------------------------- worker side


class WorkerLane(_Frames):
    """A worker's end: ``send`` on the worker's loop, ``wait_acked`` from any other thread;
    serves the driver's requests for values."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker
        self.sent = 0  # messages written
        self.acked = 0  # messages the scheduler has handled
        self.closed = False
        self.cond = threading.Condition()
        self._outbox: collections.deque[bytes | memoryview] = collections.deque()
        self._pump: asyncio.Future[None] | None = None  # drains the outbox
        self._paused: asyncio.Future[None] | None = None  # set while the transport is full

    def on_frame(self, frame: bytes | memoryview) -> None:
        msg = pickle.loads(frame)  # from the scheduler this worker connected to
        if msg[0] == "ack":
            with self.cond:
                self.acked = msg[1]
                self.cond.notify_all()
        elif msg[0] == "get":
            self._serve(msg[1], msg[2])

    def _serve(self, number: int, key: Any) -> None:
        """Send the value of ``key`` pickled with its large buffers out of band (no copy)."""
        try:
            value = dx.worker_value(self.worker, key)
            buffers: list[pickle.PickleBuffer] = []
            head = dumps(value, buffers)
            raw = [buffer.raw() for buffer in buffers]
        except Exception:  # not here (any more), or not picklable: the driver asks Dask
            self._write(_frame(pickle.dumps(("value", number, False, b"", 0))))
            return
        self._write(_frame(pickle.dumps(("value", number, True, head, len(raw)))))
        for view in raw:
            self._write(_HEADER.pack(view.nbytes))
            self._write(view)

    # -- writing in order, large buffers without a copy -----------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        """Every write of this end goes here, in order. Large buffers go out in chunks, each
        once the previous has left: a transport copies what the socket does not take at once
        (before Python 3.12), which for a 50 MB value would be a second 50 MB."""
        if self._outbox or len(data) > WRITE_CHUNK:
            self._outbox.append(data)
            if self._pump is None:
                self._pump = asyncio.ensure_future(self._drain_outbox())
        else:
            self.transport.write(data)

    async def _drain_outbox(self) -> None:
        try:
            while self._outbox and not self.transport.is_closing():
                view = memoryview(self._outbox.popleft())
                for start in range(0, len(view), WRITE_CHUNK):
                    self.transport.write(view[start : start + WRITE_CHUNK])
                    if self._paused is not None:
                        await self._paused
        finally:
            self._outbox.clear()
            self._pump = None

    def pause_writing(self) -> None:
        self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def send(self, msg: dict[str, Any]) -> int:
        """Write ``msg`` (on the worker's loop); return its number, to wait for its ack."""
        self._write(_frame(pickle.dumps(msg, protocol=5)))
        self.sent += 1
        return self.sent

    def wait_acked(self, number: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s until message ``number`` was handled; raise if it never
        will be (the lane closed first)."""
        with self.cond:
            if self.acked < number and not self.closed:
                self.cond.wait(timeout)
            if self.acked >= number:
                return True
            if self.closed:
                raise LaneClosed(
                    "daskgen: the worker's connection to the scheduler closed before the "
                    f"scheduler confirmed {number - self.acked} message(s) of this generator; "
                    "its yields may be lost, so the task fails instead of ending short"
                )
            return False


_lanes: weakref.WeakKeyDictionary[Worker, WorkerLane] = weakref.WeakKeyDictionary()


async def connect(worker: Worker, path: str, token: bytes) -> None:
    """Open this worker's lane (on its loop); on failure the worker keeps to Dask's streams."""
    try:
        loop = asyncio.get_running_loop()
        _, lane = await loop.create_unix_connection(lambda: WorkerLane(worker), path)
        lane.transport.write(_frame(token + worker.address.encode()))
    except Exception:
        logger.info("daskgen: no fast lane to the scheduler; using Dask's stream", exc_info=True)
        return
    _lanes[worker] = lane


CONNECT_TIMEOUT_S = 5.0  # a port that does not answer (a firewall): Dask's stream instead
RETRY_AFTER_S = 5.0  # after a failed try, the next one waits this long
_tried: weakref.WeakKeyDictionary[Worker, float] = weakref.WeakKeyDictionary()  # under way/failed


def ensure_lane(worker: Worker) -> None:
    """On a cluster daskgen connects to: open this worker's lane in the background if the
    scheduler offers one (on the worker's loop): once, again at once after an open lane
    closed, at most every :data:`RETRY_AFTER_S` after a failed try."""
    now = time.monotonic()
    if lane_of(worker) is not None or now - _tried.get(worker, -1e9) < RETRY_AFTER_S:
        return
    _tried[worker] = now
    asyncio.ensure_future(_connect_remote(worker))


async def _connect_remote(worker: Worker) -> None:
    try:
        where = await asyncio.wait_for(getattr(worker.scheduler, LANE_OP)(), CONNECT_TIMEOUT_S)
    except Exception:  # a scheduler without daskgen's lane (an older one), or gone
        logger.debug("daskgen: the scheduler offers no fast lane", exc_info=True)
        return
    if not where:
        return
    loop = asyncio.get_running_loop()
    lane: WorkerLane | None = None
    if where.get("local"):  # the scheduler is on this host (the name exists only there)
        try:
            _, lane = await loop.create_unix_connection(
                lambda: WorkerLane(worker), "\0" + where["local"]
            )
        except OSError:
            lane = None
    if lane is None:
        try:
            _, lane = await asyncio.wait_for(
                loop.create_connection(lambda: WorkerLane(worker), where["host"], where["port"]),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, asyncio.TimeoutError):
            logger.info("daskgen: the scheduler's fast lane cannot be reached; Dask's stream")
            return
    assert lane is not None
    lane.transport.write(_frame(where["token"] + worker.address.encode()))
    _lanes[worker] = lane
    _tried.pop(worker, None)  # a lane that closes later is opened again at the next send


def disconnect(worker: Worker) -> None:
    lane = _lanes.pop(worker, None)
    if lane is not None and lane.transport is not None:
        lane.transport.close()


def lane_of(worker: Worker) -> WorkerLane | None:
    """The worker's open lane, or None."""
    lane = _lanes.get(worker)
    return lane if lane is not None and lane.usable() else None


class Sender:
    """Sends one producer's messages, keeping them on one lane (see the module's docstring).

    ``send`` runs on the worker's loop; ``settle`` in the producer's thread before its task
    returns.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.lane: WorkerLane | None = None
        self.last = 0  # number of the last message sent on ``lane``
        self.streamed = False  # sent on Dask's stream: it stays there

    def send(self, msg: dict[str, Any]) -> None:
        lane = self.lane
        if lane is None or not lane.usable():
            if lane is not None and lane.acked < self.last:
                raise LaneClosed(
                    "daskgen: the worker's connection to the scheduler closed with "
                    f"{self.last - lane.acked} unconfirmed message(s) of this generator"
                )
            # Never from Dask's stream to a lane: the lane could overtake what the stream
            # still carries of this producer.
            lane = self.lane = None if self.streamed else lane_of(self.worker)
            self.last = 0  # numbers count on the lane they were sent on
        if lane is None:
            self.streamed = True
            dx.worker_send(self.worker, msg)
            ensure_lane(self.worker)  # for the producers after this one
        else:
            self.last = lane.send(msg)

    def settle(self, timeout: float) -> bool:
        """True once every message sent on the lane was handled by the scheduler (or none was);
        False after ``timeout`` s; raises :class:`LaneClosed` if some never will be."""
        lane = self.lane
        return lane is None or lane.wait_acked(self.last, timeout)


def send_soon(worker: Worker, msg: dict[str, Any]) -> None:
    """From any thread: send ``msg`` on the worker's loop, by its lane if it has one.

    For messages whose order against the task's completion does not matter (inline results: the
    caller takes whichever comes first).
    """
    worker.loop.add_callback(Sender(worker).send, msg)
