"""A direct line from each embedded worker to the scheduler, for daskgen's own announcements.

Why: on daskgen's embedded cluster, a lone yield took ~1.2 ms from the generator to its caller,
and ~0.6 ms of that was one Dask message from the worker to the scheduler (measured with a bare
message on the worker's batched stream: waking the stream's writer, framing, Tornado's reads on
the scheduler side, each a few turns of the event loop, run cold after the process idled). The
same message over a Unix socket, read by an ``asyncio.Protocol`` on the scheduler's loop, took
~0.12 ms. So the embedded cluster's workers send the yield announcements and inline results
(``daskgen-publish``, ``daskgen-result``) this way; everything else, and any cluster daskgen did
not start, stays on Dask's streams.

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
import hmac
import logging
import os
import pickle
import shutil
import struct
import tempfile
import threading
import weakref
from typing import Any

from distributed import SchedulerPlugin, Worker

from . import _dask_internals as dx
from ._protocol import PUBLISH_OP, RESULT_OP

logger = logging.getLogger("daskgen")

# Messages the lane may carry; anything else is dropped (and the connection closed).
LANE_OPS = frozenset({PUBLISH_OP, RESULT_OP})
_HEADER = struct.Struct("!I")  # length of the frame that follows
_ACK = struct.Struct("!Q")  # scheduler -> worker: messages handled so far on this connection
TOKEN_BYTES = 32


class LaneClosed(ConnectionError):
    """The lane closed while some of a producer's messages were not acknowledged."""


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class _Frames:
    """Splits a byte stream into length-prefixed frames."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self.buffer
        buffer += data
        frames = []
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if end > len(buffer):
                break
            frames.append(bytes(buffer[start + _HEADER.size : end]))
            start = end
        del buffer[:start]
        return frames


# ---------------------------------------------------------------------------- scheduler side


class _SchedulerEnd(asyncio.Protocol):
    """One worker's connection, on the scheduler's loop."""

    def __init__(self, lane: FastLaneScheduler) -> None:
        self.lane = lane
        self.frames = _Frames()
        self.transport: Any = None
        self.worker: str | None = None  # set by the hello frame
        self.handled = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.lane.ends.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lane.ends.discard(self)

    def data_received(self, data: bytes) -> None:
        for frame in self.frames.feed(data):
            if self.transport.is_closing():
                return  # refused, or a broken frame before this one
            if self.worker is None:
                if not self._hello(frame):
                    self.transport.close()
                    return
                continue
            self._dispatch(frame)
            self.handled += 1
        if self.worker is not None and not self.transport.is_closing():
            self.transport.write(_ACK.pack(self.handled))

    def _hello(self, frame: bytes) -> bool:
        token, address = frame[:TOKEN_BYTES], frame[TOKEN_BYTES:]
        if not hmac.compare_digest(token, self.lane.token):
            logger.warning("daskgen: refused a fast-lane connection with a wrong token")
            return False
        self.worker = address.decode()
        return True

    def _dispatch(self, frame: bytes) -> None:
        scheduler = self.lane.scheduler
        try:
            msg = pickle.loads(frame)
            op = msg.pop("op")
            if op not in LANE_OPS:
                raise ValueError(f"unexpected message {op!r}")
            if self.worker is None or not dx.scheduler_has_worker(scheduler, self.worker):
                return  # removed: Dask would no longer read its stream either
            dx.scheduler_stream_handler(scheduler, op)(worker=self.worker, **msg)
        except Exception:  # the handlers catch their own errors; this is a broken frame
            logger.exception("daskgen: bad fast-lane message from %s", self.worker)
            self.transport.close()


class FastLaneScheduler(SchedulerPlugin):
    """Listens on a Unix socket in a private directory, on the scheduler's loop."""

    name = "daskgen-fast-lane"

    def __init__(self, path: str, token: bytes) -> None:
        self.path = path
        self.token = token
        self.scheduler: Any = None
        self.server: Any = None
        self.ends: set[_SchedulerEnd] = set()  # open connections

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: _SchedulerEnd(self), self.path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()  # stops listening; the open connections close below
        for end in list(self.ends):
            end.transport.close()
        shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)


def new_lane() -> tuple[str, bytes] | None:
    """A socket path in a fresh private directory and a random token; None where Unix sockets
    are not available (the workers then use Dask's streams only)."""
    if not hasattr(asyncio.AbstractEventLoop, "create_unix_server") or os.name != "posix":
        return None
    directory = tempfile.mkdtemp(prefix="daskgen-")  # mode 0700
    return os.path.join(directory, "lane"), os.urandom(TOKEN_BYTES)


# ------------------------------------------------------------------------------- worker side


class WorkerLane(asyncio.Protocol):
    """A worker's end: ``send`` on the worker's loop, ``wait_acked`` from any other thread."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.sent = 0  # messages written
        self.acked = 0  # messages the scheduler has handled
        self.closed = False
        self.cond = threading.Condition()
        self.acks = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        data = self.acks + data
        whole = len(data) - len(data) % _ACK.size
        self.acks = data[whole:]
        if whole:
            (acked,) = _ACK.unpack_from(data, whole - _ACK.size)
            with self.cond:
                self.acked = acked
                self.cond.notify_all()

    def connection_lost(self, exc: Exception | None) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def send(self, msg: dict[str, Any]) -> int:
        """Write ``msg`` (on the worker's loop); return its number, to wait for its ack."""
        self.transport.write(_frame(pickle.dumps(msg, protocol=5)))
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
        _, lane = await loop.create_unix_connection(WorkerLane, path)
        lane.transport.write(_frame(token + worker.address.encode()))
    except Exception:
        logger.info("daskgen: no fast lane to the scheduler; using Dask's stream", exc_info=True)
        return
    _lanes[worker] = lane


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

    def send(self, msg: dict[str, Any]) -> None:
        lane = self.lane
        if lane is None or not lane.usable():
            if lane is not None and lane.acked < self.last:
                raise LaneClosed(
                    "daskgen: the worker's connection to the scheduler closed with "
                    f"{self.last - lane.acked} unconfirmed message(s) of this generator"
                )
            lane = self.lane = lane_of(self.worker)
        if lane is None:
            dx.worker_send(self.worker, msg)
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

    def _send() -> None:
        lane = lane_of(worker)
        if lane is None:
            dx.worker_send(worker, msg)
        else:
            lane.send(msg)

    worker.loop.add_callback(_send)
