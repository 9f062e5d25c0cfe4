"""Large byte buffers, reused once nothing refers to them (in any process).

Why: memory the process has not touched yet costs a page fault per page when first written.
Here, filling a fresh 10 MB NumPy buffer while 50 others stay alive took ~11 ms (NumPy advises
the kernel to back it with huge pages, each zeroed when faulted in), filling a reused one
~1 ms. A call's 10 MB arguments are received into such a buffer on the worker that keeps them
(``_worker.actor_wire``), and copied into one in the driver when they must wait to be sent
(``_client.actor_channel``); 200 such calls in a row made ~1 GB of fresh memory every second.

A buffer is handed out as a NumPy view of a base array the pool keeps; when the view dies
(``weakref.finalize``: every array or memoryview made from it refers to it, so that is when
nothing can read it any more), its base goes back to the pool for the next buffer of the same
size. At most :data:`IDLE_BYTES` wait there per process: the rest is freed as usual.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy

POOLED = 1 << 20  # bytes: buffers from this size are pooled
IDLE_BYTES = 64 << 20  # bytes of idle buffers a process keeps at most

_idle: dict[int, list[numpy.ndarray]] = {}
_idle_bytes = 0
_lock = threading.Lock()


def take(size: int) -> numpy.ndarray:
    """A writable uint8 buffer of ``size`` bytes, not zeroed (its content is whatever was there)."""
    if size < POOLED:
        return numpy.empty(size, dtype=numpy.uint8)
    global _idle_bytes
    with _lock:
        idle = _idle.get(size)
        base = idle.pop() if idle else None
        if base is not None:
            _idle_bytes -= size
    if base is None:
        base = numpy.empty(size, dtype=numpy.uint8)
    view = base[:]
    weakref.finalize(view, _give_back, base)
    return view


def copy_of(buffer: Any) -> numpy.ndarray:
    """A copy of ``buffer``'s bytes in a buffer from :func:`take`."""
    source = numpy.frombuffer(buffer, dtype=numpy.uint8)
    copy = take(source.nbytes)
    copy[:] = source
    return copy


def _give_back(base: numpy.ndarray) -> None:
    global _idle_bytes
    with _lock:
        if _idle_bytes + base.nbytes <= IDLE_BYTES:
            _idle.setdefault(base.nbytes, []).append(base)
            _idle_bytes += base.nbytes


def idle_bytes() -> int:
    """Bytes of idle buffers this process keeps (tests look)."""
    return _idle_bytes
