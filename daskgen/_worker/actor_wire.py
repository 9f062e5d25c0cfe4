"""The worker's end of the actor wire: a plain TCP socket that carries actor calls and their
results between a caller process and the worker hosting its actors, with no event-loop hop on
the caller's side and none for a result on the worker's.

Why not Dask's comm layer, as the other daskgen connections: a sequential actor call made over
it (``get`` after each call) took ~1.2-1.3 ms here, against ~0.66 ms for Ray 2.60. Measured with
bare 50-byte messages between two processes on this machine: a Dask comm echo costs ~260-360 us
a round trip (Tornado's reads and writes, a few turns of each event loop), the same over plain
sockets read and written by threads ~50-120 us. So a caller writes its calls straight from the
calling thread and a thread of its own reads the results (``_client.actor_wire``); here the
worker's loop reads the calls (an ``add_reader`` callback, no Tornado) and an actor's thread
writes its result the moment the method returns.

What the wire is not: it is daskgen's own connection, opened by daskgen's callers only, on a
port of its own that the worker opens when daskgen first needs it. Dask's comm stays the way
in: the caller learns the port and a random token from ``install`` (run through ``Client.run``,
so over the cluster's own security), and a connection that does not present the token first is
closed before anything is read from it. Clusters whose workers are not on ``tcp://`` (TLS,
for one) keep actor calls on Dask's comm layer, and so does a caller that cannot reach the
port (a firewall): both paths carry the same messages (see ``actor_host``).

Framing (``_protocol.wire_frame``): an 8-byte length, then a pickled list of messages; a
message with ``raw`` sizes is followed by that many unframed bytes (``_protocol.read_raw``).

The wire also carries large values to a caller's ``get`` (``_client.fetch``): a value of 8 MB
took ~7.5 ms (median) by Dask's gather from a worker of a real cluster here; the wire carries
it in ~2.4 ms from a worker on the caller's host (its Unix socket), received straight into the
buffers the value is built on.
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .._protocol import (
    WIRE_READ_BYTES,
    WIRE_TOKEN_BYTES,
    RawChunks,
    cut_frames,
    wire_frame,
    wire_socket,
)

logger = logging.getLogger("daskgen")

MAX_FDS = 64  # file descriptors taken per read (a store message sends at most 32)


class WireServer:
    """The worker's listening socket, read on the worker's loop (made by ``install``)."""

    def __init__(self, worker: Any, make_stream: Callable[[Any, Any, str], Any]) -> None:
        """``make_stream(connection, worker, client_id)`` returns what handles the caller's
        messages (``actor_host.CallerStream``); called once the caller has shown the token.
        The server holds the worker weakly, and closes when the worker is collected (a worker
        process takes it with it)."""
        address = urlsplit(worker.address)
        self.worker = weakref.ref(worker)
        self.make_stream = make_stream
        self.host = address.hostname or "127.0.0.1"
        self.token = os.urandom(WIRE_TOKEN_BYTES)
        self.sock = socket.create_server((self.host, 0))
        self.port = self.sock.getsockname()[1]
        self.local_name, self.local = _local_server()
        self.connections: set[WireConnection] = set()
        self.loop = worker.loop.asyncio_loop
        for sock in self._listening():
            sock.setblocking(False)
            self.loop.add_reader(sock.fileno(), self._accept, sock)
        weakref.finalize(worker, _close_server, self.loop, self._listening(), self.connections)

    def _listening(self) -> list[socket.socket]:
        return [self.sock] if self.local is None else [self.sock, self.local]

    def contact(self) -> tuple[str, int, bytes, str | None]:
        """Where callers connect (the TCP host and port, and the name of the Unix socket a
        caller on this host connects to instead), and what they show first."""
        return self.host, self.port, self.token, self.local_name

    def close(self) -> None:
        """Stop listening (the connections made stay open)."""
        for sock in self._listening():
            _stop_listening(self.loop, sock)

    def _accept(self, listening: socket.socket) -> None:
        try:
            conn, _ = listening.accept()
        except OSError:
            return
        worker = self.worker()
        if worker is None or worker.status.name not in ("running", "paused"):
            conn.close()
            return
        self.connections.add(WireConnection(self, conn))


def _stop_listening(loop: Any, sock: socket.socket) -> None:
    try:
        loop.remove_reader(sock.fileno())
    except Exception:  # the loop is closed already, or the socket
        pass
    sock.close()


def _local_server() -> tuple[str | None, socket.socket | None]:
    """A Unix socket in Linux's abstract namespace (no file to clean up; gone with the
    process), for callers on this host: an 8 MB value crosses it in ~1.6 ms here with the
    wire's socket buffers, against ~2.7-3.2 ms over local TCP. Its name is random, learned
    like the port, and a caller shows the token on it too. (None, None) elsewhere: callers
    use TCP."""
    if not sys.platform.startswith("linux"):
        return None, None
    name = "daskgen-wire-" + os.urandom(16).hex()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + name)
        sock.listen()
    except OSError:
        sock.close()
        return None, None
    return name, sock


def _close_server(
    loop: Any, listening: list[socket.socket], connections: set[WireConnection]
) -> None:
    for sock in listening:
        _stop_listening(loop, sock)
    for connection in list(connections):
        try:
            loop.call_soon_threadsafe(connection.close)
        except RuntimeError:  # the loop is closed: the sockets only
            connection.conn.close()


class WireConnection:
    """One caller process's wire. Read on the worker's loop; written from any thread."""

    direct = True  # an actor's thread writes its result itself (see ActorHost._finished)

    def __init__(self, server: WireServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.fd = conn.fileno()
        wire_socket(conn)  # blocking writes, bounded; reads never wait (MSG_DONTWAIT)
        self.buf = bytearray()
        self.shown = False  # the token
        self.stream: Any = None  # the CallerStream, made by the first message
        # The unframed chunks being received, and the frame they belong to (handled then).
        self.raw: tuple[RawChunks, list[list[dict[str, Any]]]] | None = None
        self.local = conn.family == getattr(socket, "AF_UNIX", None)  # a caller on this host
        self.fds: collections.deque[int] = collections.deque()  # received, not yet taken
        self.open = True
        self._write_lock = threading.Lock()
        server.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        if self.raw is not None:
            self._read_raw(self.raw)
            return
        try:
            if self.local:  # file descriptors may come along (shared memory)
                data, fds, flags, _ = socket.recv_fds(
                    self.conn, WIRE_READ_BYTES, MAX_FDS, socket.MSG_DONTWAIT
                )
                self.fds.extend(fds)
                if flags & socket.MSG_CTRUNC:
                    logger.error("daskgen: file descriptors lost on the actor wire; closing it")
                    data = b""
            else:
                data = self.conn.recv(WIRE_READ_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.buf += data
        if not self.shown:
            if len(self.buf) < WIRE_TOKEN_BYTES:
                return
            if not hmac.compare_digest(bytes(self.buf[:WIRE_TOKEN_BYTES]), self.server.token):
                logger.warning("daskgen: closed an actor-wire connection without the token")
                self.close()
                return
            del self.buf[:WIRE_TOKEN_BYTES]
            self.shown = True
        self._consume()

    def _read_raw(self, raw: tuple[RawChunks, list[list[dict[str, Any]]]]) -> None:
        """A value's chunks: received straight into their buffers; its frame is handled once
        they are all here."""
        chunks, frame = raw
        try:
            got = self.conn.recv_into(chunks.space(), 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            got = 0
        if not got:
            self.close()
        elif chunks.received(got):
            self.raw = None
            self._consume(frame)

    def _consume(self, ready: list[list[dict[str, Any]]] | None = None) -> None:
        """Handle ``ready`` and then the whole frames received; a frame announcing unframed
        chunks (its last message's ``raw`` sizes) is handled once they are all here, as its
        ``chunks``."""
        try:
            if ready:
                self._handle(ready)
            while self.open:
                batches = cut_frames(self.buf)
                if not batches:
                    return
                last = batches[-1][-1] if batches[-1] else {}
                if last.get("raw"):
                    raw = RawChunks(self.buf, last.pop("raw"))
                    last["chunks"] = raw.chunks
                    if not raw.done:
                        self._handle(batches[:-1])
                        self.raw = (raw, batches[-1:])
                        return
                self._handle(batches)
        except Exception:
            logger.exception("daskgen: bad frame on the actor wire; closing it")
            self.close()

    def _handle(self, batches: list[list[dict[str, Any]]]) -> None:
        for batch in batches:
            for msg in batch:
                count = msg.get("fds")
                if count:  # they came no later than the bytes they were sent with
                    msg["fds"] = [self.fds.popleft() for _ in range(count)]
                if self.stream is None:  # the first message: who the caller is
                    worker = self.server.worker()
                    if worker is None:
                        self.close()
                        return
                    self.stream = self.server.make_stream(self, worker, msg["client"])
                else:
                    self.stream.handle(msg)  # logs its own errors

    # -- what CallerStream uses (its ``replies``) ----------------------------------------------

    def send(self, msg: dict[str, Any]) -> None:
        """Write one message now (any thread); a failed write closes the connection."""
        self.send_many([msg])

    def send_many(self, msgs: list[dict[str, Any]]) -> None:
        data = wire_frame(msgs)
        with self._write_lock:
            if not self.open:
                return
            try:
                self.conn.sendall(data)
                return
            except OSError:  # the caller left, or stopped reading (timeout)
                pass
        self.server.loop.call_soon_threadsafe(self.close)

    def send_raw(self, msg: dict[str, Any], chunks: list[Any]) -> None:
        """Write ``msg`` and then the unframed ``chunks`` it announces (its ``raw`` sizes; see
        ``_protocol.read_raw``), none of them copied (any thread; a failed write closes)."""
        data = wire_frame([msg])
        with self._write_lock:
            if not self.open:
                return
            try:
                self.conn.sendall(data)
                for chunk in chunks:
                    self.conn.sendall(chunk)
                return
            except OSError:
                pass
        self.server.loop.call_soon_threadsafe(self.close)

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        """On the worker's loop: the caller is gone (or must be): free what it held here."""
        if not self.open:
            return
        self.open = False
        self.server.connections.discard(self)
        try:
            self.server.loop.remove_reader(self.fd)
        except Exception:
            pass
        try:
            self.conn.shutdown(socket.SHUT_RDWR)  # a write under way fails at once
        except OSError:
            pass
        with self._write_lock:
            self.conn.close()
        while self.fds:
            os.close(self.fds.popleft())
        if self.stream is not None:
            self.stream.closed()
