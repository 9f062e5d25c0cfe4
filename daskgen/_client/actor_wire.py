"""The caller's end of the actor wire (``_worker.actor_wire`` says why it exists and what it
carries): calls are written from the thread that makes them, and a thread of the link's own
reads the results, so a sequential call (``get`` after each) crosses no event loop here.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from .._protocol import WIRE_READ_BYTES, cut_frames, read_raw, wire_frame, wire_socket

CONNECT_TIMEOUT_S = 5.0  # a port that does not answer (a firewall): Dask's comm layer instead


def _connect_local(name: str | None) -> socket.socket | None:
    """The worker's Unix socket, if it is on this host (its abstract name exists only there:
    elsewhere the connection is refused at once); else None, and TCP is used."""
    if name is None or not hasattr(socket, "AF_UNIX"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect("\0" + name)
    except OSError:
        sock.close()
        return None
    return sock


class WireLink:
    """One open wire to a worker. ``on_replies(msgs)`` is called in the link's reader thread
    for each batch that arrives; ``on_closed(error)`` once, in that thread, when it ends."""

    def __init__(
        self,
        contact: tuple[str, int, bytes, str | None],
        client_id: str,
        on_replies: Callable[[list[dict[str, Any]]], None],
        on_closed: Callable[[BaseException | None], None],
    ) -> None:
        """Connect (blocking, bounded: run it off the client's loop); raises ``OSError``."""
        host, port, token, local_name = contact
        sock = _connect_local(local_name) or socket.create_connection(
            (host, port), timeout=CONNECT_TIMEOUT_S
        )
        wire_socket(sock)  # blocking; each write bounded
        sock.sendall(token + wire_frame([{"client": client_id}]))
        self.sock = sock
        self._lock = threading.Lock()
        self._closed = False
        self._on_replies = on_replies
        self._on_closed = on_closed
        # On this host (a Unix socket): shared memory can carry large arguments (``store``).
        self.local = sock.family == getattr(socket, "AF_UNIX", None)
        threading.Thread(target=self._read, daemon=True, name="daskgen-actor-wire").start()

    def send_many(self, msgs: list[dict[str, Any]]) -> None:
        """Write ``msgs`` now (any thread; in order across threads). A message with
        ``chunks`` (buffers: a stored argument's bytes) ends its frame, and its chunks follow
        it unframed, not copied (``_protocol.cut_frames``). A failed write ends the link: the
        reader thread then reports it closed, and the calls on it fail."""
        parts: list[tuple[Any, list[int]]] = []  # (bytes, file descriptors sent with them)
        frame: list[dict[str, Any]] = []
        fds: list[int] = []
        for msg in msgs:
            chunks, sending = msg.get("chunks"), msg.get("fds")
            if chunks or sending:
                msg = {k: v for k, v in msg.items() if k not in ("chunks", "fds")}
            if chunks:
                msg["raw"] = [memoryview(chunk).nbytes for chunk in chunks]
            if sending:  # shared-memory segments' descriptors (``shared_memory``): a count
                fds += sending
                msg["fds"] = len(sending)
            frame.append(msg)
            if chunks:
                parts += [(wire_frame(frame), fds), *((chunk, []) for chunk in chunks)]
                frame, fds = [], []
        if frame:
            parts.append((wire_frame(frame), fds))
        with self._lock:
            if self._closed:
                return
            try:
                for part, with_fds in parts:
                    if with_fds:
                        sent = socket.send_fds(self.sock, [part], with_fds)
                        part = memoryview(part)[sent:]
                    self.sock.sendall(part)
            except OSError:
                self._shut()

    def close(self) -> None:
        with self._lock:
            self._shut()

    def _shut(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _read(self) -> None:
        buf = bytearray()
        error: BaseException | None = None
        try:
            while True:
                batches = cut_frames(buf)
                last = batches[-1][-1] if batches and batches[-1] else {}
                if last.get("raw"):  # a fetched value's chunks follow its frame, unframed
                    last["chunks"] = read_raw(self.sock, buf, last.pop("raw"))
                for batch in batches:
                    self._on_replies(batch)
                if batches:
                    continue  # more whole frames may follow in ``buf``
                data = self.sock.recv(WIRE_READ_BYTES)
                if not data:
                    break
                buf += data
        except OSError:
            pass
        except Exception as exc:  # a bad frame: the link cannot be trusted any more
            error = exc
        with self._lock:
            self._shut()
            self.sock.close()
        self._on_closed(error)
