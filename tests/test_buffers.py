"""``daskgen._buffers``: a large buffer's memory is reused once nothing refers to it, never while
anything made from it is alive, and the idle pool stays bounded. daskgen only."""

from __future__ import annotations

import gc

import numpy as np
import pytest

pytestmark = pytest.mark.daskgen_only

MB = 2**20


def test_a_buffer_is_reused_only_once_nothing_refers_to_it():
    from daskgen import _buffers

    first = _buffers.take(3 * MB + 1)
    address = first.__array_interface__["data"][0]
    derived = np.frombuffer(memoryview(first).toreadonly(), dtype=np.float64, count=8)
    del first
    gc.collect()
    other = _buffers.take(3 * MB + 1)  # the first one is still read through ``derived``
    assert other.__array_interface__["data"][0] != address
    del other
    gc.collect()
    del derived
    gc.collect()
    again = _buffers.take(3 * MB + 1)  # the last one given back
    assert again.__array_interface__["data"][0] == address  # reused: no fresh pages
    assert again.flags.writeable and again.nbytes == 3 * MB + 1


def test_copies_are_exact_and_the_idle_pool_is_bounded():
    from daskgen import _buffers

    source = np.arange(MB, dtype=np.float64)
    copy = _buffers.copy_of(memoryview(source))
    assert (np.frombuffer(copy, dtype=np.float64) == source).all()
    held = [_buffers.take(9 * MB) for _ in range(12)]  # 108 MB, more than the pool keeps
    del held, copy
    gc.collect()
    assert _buffers.idle_bytes() <= _buffers.IDLE_BYTES
    assert _buffers.take(10).nbytes == 10  # small ones are not pooled
