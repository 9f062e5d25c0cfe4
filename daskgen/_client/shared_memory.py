"""Shared memory for a call's stored arguments when the worker that keeps them is on the
caller's host (runs in the caller's process; ``_worker.shared_memory`` is the worker's half).

Why: written over the wire's Unix socket, a 10 MB array is copied twice (into the kernel, out
of it into the worker's buffer) and the caller waits for the worker to read it; 200 such calls
took ~1.0-1.4 s here with both cores busy, Ray 0.75-2.4 s (it copies each argument once into
its object store, shared memory the worker reads in place). Here too: the caller copies the
array once into a segment of shared memory (a ``memfd``, already mapped and faulted in: no
fresh pages) and sends only its number; the worker maps each segment once (its file
descriptor rides the wire's Unix socket the first time, ``SCM_RIGHTS``) and keeps the
arguments as read-only views of it, with no copy at all.

A segment is **lent** to the worker until it says the arguments are gone (``shm-free``: the
views it made died, so nothing there reads them any more); only then is it written again.
Segments are made on demand in sizes rounded up to a MiB, at most :data:`BUDGET` bytes per
worker; a call that finds none free within that (the worker still holds them all) sends its
arguments over the socket as before. Nothing outlives the processes: a memfd has no name, and
its memory goes when the last process that maps it lets go of it. When the connection closes
(the worker died, or this process shuts down), this side drops its segments; a worker still
alive keeps its own mappings, valid for as long as its views live.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
from typing import Any

import numpy

MB = 1 << 20
BUDGET = 256 << 20  # bytes of segments this process keeps per worker at most
MAX_NEW_PER_MESSAGE = 32  # file descriptors one message may carry

AVAILABLE = hasattr(os, "memfd_create")

_numbers = itertools.count(1)
lent = 0  # buffers this process lent as shared memory (tests look)


class Segment:
    __slots__ = ("number", "size", "fd", "map", "view", "shown")

    def __init__(self, size: int) -> None:
        self.number = next(_numbers)
        self.size = size
        self.fd = os.memfd_create("daskgen-args", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = numpy.frombuffer(self.map, dtype=numpy.uint8)
        self.shown = False  # the worker has mapped it (its fd was sent)

    def close(self) -> None:
        del self.view
        try:
            self.map.close()
        except BufferError:  # a copy into it is under way in another thread: let GC do it
            pass
        os.close(self.fd)


class SegmentPool:
    """The segments this process lends one worker on its host (any thread)."""

    def __init__(self) -> None:
        self._free: dict[int, list[Segment]] = {}
        self._lent: dict[int, Segment] = {}
        self._bytes = 0
        self._dropped: list[int] = []  # closed here, still mapped by the worker
        self._lock = threading.Lock()
        self.closed = False

    def lend(self, buffers: list[Any] | tuple[Any, ...]) -> dict[str, Any] | None:
        """Copy each of ``buffers`` into a segment lent to the worker, and return what the
        ``store`` message carries of them: ``shm``, (number, bytes, the segment's size if the
        worker has not mapped it yet, else 0) for each; ``fds``, the file descriptors of those
        new segments, sent along; ``drop``, segments closed here to make room, which the worker
        unmaps. None if they do not fit."""
        taken: list[Segment] = []
        with self._lock:
            for buffer in buffers:
                segment = self._take(memoryview(buffer).nbytes)
                if segment is None:
                    break
                taken.append(segment)
            new = [s for s in taken if not s.shown]
            if len(taken) < len(buffers) or len(new) > MAX_NEW_PER_MESSAGE or self.closed:
                self._give_back(taken)
                return None
            for segment in taken:
                self._lent[segment.number] = segment
            dropped, self._dropped = self._dropped, []
        shm = []
        for segment, buffer in zip(taken, buffers, strict=True):
            nbytes = memoryview(buffer).nbytes
            segment.view[:nbytes] = numpy.frombuffer(buffer, dtype=numpy.uint8)
            shm.append((segment.number, nbytes, 0 if segment.shown else segment.size))
        fds = [s.fd for s in new]
        for segment in new:
            segment.shown = True
        global lent
        lent += len(shm)
        return {"shm": shm, "fds": fds, "drop": dropped}

    def lent_out(self) -> int:
        """Segments the worker holds now."""
        return len(self._lent)

    def returned(self, numbers: list[int]) -> None:
        """The worker let go of these segments (its ``shm-free``)."""
        with self._lock:
            back = [self._lent.pop(number, None) for number in numbers]
            self._give_back([segment for segment in back if segment is not None])

    def close(self) -> None:
        """The connection closed: drop every segment (the worker keeps its own mappings)."""
        with self._lock:
            self.closed = True
            segments = [s for free in self._free.values() for s in free] + [*self._lent.values()]
            self._free.clear()
            self._lent.clear()
            self._bytes = 0
        for segment in segments:
            segment.close()

    def _take(self, nbytes: int) -> Segment | None:
        size = -(-nbytes // MB) * MB
        free = self._free.get(size)
        if free:
            return free.pop()
        while self._bytes + size > BUDGET and self._evict_one():
            pass
        if self._bytes + size > BUDGET:
            return None
        try:
            segment = Segment(size)
        except OSError:  # no memory or file descriptors left for it: the socket instead
            return None
        self._bytes += size
        return segment

    def _evict_one(self) -> bool:
        """Close one free segment (of another size) to make room; False if none is free."""
        for free in self._free.values():
            if free:
                segment = free.pop()
                self._bytes -= segment.size
                if segment.shown:
                    self._dropped.append(segment.number)
                segment.close()
                return True
        return False

    def _give_back(self, segments: list[Segment]) -> None:
        for segment in segments:
            if self.closed:
                segment.close()
            else:
                self._free.setdefault(segment.size, []).append(segment)
