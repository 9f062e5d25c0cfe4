"""The worker's half of shared-memory arguments (``_client.shared_memory`` says why and how):
the segments one caller on this host lent, mapped read-only once each, and the views of them
that a call's stored arguments are kept as. When a view dies (nothing here reads it any more),
the caller is told it may write that segment again."""

from __future__ import annotations

import logging
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy

logger = logging.getLogger("daskgen")


class Mapped:
    """One caller's segments, as this worker maps them (on the worker's loop; views may die
    in any thread)."""

    def __init__(self, loop: Any, send: Callable[[dict[str, Any]], None]) -> None:
        self.loop = loop
        self.send = send
        self.maps: dict[int, mmap.mmap] = {}
        self._freed: list[int] = []
        self._lock = threading.Lock()

    def views(
        self, shm: list[tuple[int, int, int]], fds: Iterable[int], drop: list[int]
    ) -> list[numpy.ndarray]:
        """Read-only views of the lent bytes (mapping the new segments, whose ``fds`` came
        with the message); ``drop``: segments the caller closed, unmapped here once no view
        of them is left."""
        for number in drop:
            self.maps.pop(number, None)
        new = iter(fds)
        out = []
        for number, nbytes, size in shm:
            if size:
                fd = next(new)
                try:
                    self.maps[number] = mmap.mmap(fd, size, prot=mmap.PROT_READ)
                finally:
                    os.close(fd)
            view = numpy.frombuffer(self.maps[number], dtype=numpy.uint8, count=nbytes)
            weakref.finalize(view, self._released, number)
            out.append(view)
        return out

    def close(self) -> None:
        """The caller is gone: its segments stay mapped only as long as views of them live."""
        self.maps.clear()

    def _released(self, number: int) -> None:
        with self._lock:
            self._freed.append(number)
            first = len(self._freed) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the worker's loop is closed: nobody to tell
                pass

    def _flush(self) -> None:
        with self._lock:
            numbers, self._freed = self._freed, []
        if numbers:
            self.send({"op": "shm-free", "numbers": numbers})
