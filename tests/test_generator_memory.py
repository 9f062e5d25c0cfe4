"""Memory and lifetime of generator results on daskgen (SPEC sections 4 and 7).

daskgen only: the checks look at the Dask scheduler and at the memory of the worker that runs the
generator.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import time
import tracemalloc

import numpy as np
import pytest

pytestmark = [
    pytest.mark.daskgen_only,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # num_returns="dynamic"
]


def _scheduler_task_count(ray):
    return ray.get_client().run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def _wait_until(condition, what, timeout=30):
    """Bounded polling wait: releasing a key travels client -> scheduler -> worker asynchronously,
    and there is no event to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


def _assert_task_count_returns_to(ray, baseline):
    gc.collect()
    _wait_until(
        lambda: _scheduler_task_count(ray) <= baseline,
        f"the scheduler's task count returned to {baseline}",
    )


def _baseline(ray):
    gc.collect()
    return _scheduler_task_count(ray)


def _counting_generator(ray):
    @ray.remote
    def count(n):
        yield from range(n)

    return count


# --- dropping every ref frees the cluster ---------------------------------------------------------


def test_dropping_every_ref_of_a_static_generator_returns_the_task_count_to_baseline(ray):
    count = _counting_generator(ray)
    baseline = _baseline(ray)

    refs = count.options(num_returns=5).remote(5)
    assert ray.get(refs, timeout=60) == [0, 1, 2, 3, 4]
    assert _scheduler_task_count(ray) > baseline

    del refs
    _assert_task_count_returns_to(ray, baseline)


def test_dropping_every_ref_of_a_dynamic_generator_returns_the_task_count_to_baseline(ray):
    count = _counting_generator(ray)
    baseline = _baseline(ray)

    dynamic_ref = count.options(num_returns="dynamic").remote(5)
    ref_generator = ray.get(dynamic_ref, timeout=60)
    refs = list(ref_generator)
    assert ray.get(refs, timeout=60) == [0, 1, 2, 3, 4]
    assert _scheduler_task_count(ray) > baseline

    del dynamic_ref, ref_generator, refs
    _assert_task_count_returns_to(ray, baseline)


def test_dropping_every_ref_of_a_streaming_generator_returns_the_task_count_to_baseline(ray):
    count = _counting_generator(ray)
    baseline = _baseline(ray)

    gen = count.remote(5)
    refs = list(gen)
    assert ray.get(refs, timeout=60) == [0, 1, 2, 3, 4]
    assert _scheduler_task_count(ray) > baseline

    del gen, refs
    _assert_task_count_returns_to(ray, baseline)


# --- many small yields ---------------------------------------------------------------------------


def _small_items(ray):
    @ray.remote
    def items(n):
        for i in range(n):
            yield (i, f"item-{i}")

    return items


def test_a_thousand_small_streaming_yields_round_trip_intact(ray):
    items = _small_items(ray)

    values = ray.get(list(items.remote(1000)), timeout=60)

    assert values == [(i, f"item-{i}") for i in range(1000)]


def test_a_thousand_small_dynamic_yields_round_trip_intact(ray):
    items = _small_items(ray)

    ref_generator = ray.get(items.options(num_returns="dynamic").remote(1000), timeout=60)

    assert len(ref_generator) == 1000
    values = ray.get(list(ref_generator), timeout=60)
    assert values == [(i, f"item-{i}") for i in range(1000)]


def test_a_long_streams_bookkeeping_in_the_caller_grows_with_the_refs_waiting_not_the_yields(ray):
    # What the caller's state keeps when a yield arrives must go when its ref is taken: an
    # entry per yield ever published reached 5 MB per 100,000 yields (docs/performance.md,
    # "Long-running drivers"). Backpressure keeps the refs waiting few. Measured: +257 KB
    # from 1,000 to 10,000 yields with an entry per yield; 3-5 KB at both points without.
    count = _counting_generator(ray)
    gen = count.options(_generator_backpressure_num_objects=50).remote(10_000)

    def kept_from_arrivals() -> int:
        """Bytes still held that the state allocated on a yield's arrival (its handler, on
        the client's loop: both frames in genstate.py; a ref handed out is not)."""
        gc.collect()
        return sum(
            trace.size
            for trace in tracemalloc.take_snapshot().traces
            if len(trace.traceback) == 2
            and all(frame.filename.endswith("genstate.py") for frame in trace.traceback)
        )

    tracemalloc.start(2)
    try:
        for _ in range(1_000):
            next(gen)
        after_1_000 = kept_from_arrivals()
        (last,) = collections.deque(gen, maxlen=1)  # every other ref dropped as it comes
        after_10_000 = kept_from_arrivals()
    finally:
        tracemalloc.stop()
    assert ray.get(last, timeout=60) == 9_999
    assert after_10_000 - after_1_000 < 50_000, (after_1_000, after_10_000)


# --- large values --------------------------------------------------------------------------------

MEDIUM_ARRAY_BYTES = 8_000_000


def test_twenty_8_mb_arrays_round_trip_intact(ray):
    def medium_array(seed):  # nested: the task must not need to import this test module
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, size=MEDIUM_ARRAY_BYTES, dtype=np.uint8)

    @ray.remote
    def arrays(n):
        for i in range(n):
            yield medium_array(i)

    digests = []
    for ref in arrays.remote(20):
        array = ray.get(ref, timeout=60)
        assert array.dtype == np.uint8 and array.shape == (MEDIUM_ARRAY_BYTES,)
        digests.append(hashlib.sha256(array).hexdigest())
        del array, ref

    assert digests == [hashlib.sha256(medium_array(i)).hexdigest() for i in range(20)]


BIG_ARRAY_BYTES = 50_000_000
PEAK_LIMIT_BYTES = int(1.5 * BIG_ARRAY_BYTES) + 10_000_000


def test_a_generator_of_ten_50_mb_arrays_never_holds_more_than_about_one(ray, tmp_path):
    # What is measured: tracemalloc inside the generator's own process (numpy registers its data
    # buffers with tracemalloc), started by the generator before its first array.
    #
    # A yielded value rightly stays alive in the worker while some ref to it exists, so the
    # consumer takes each ref as soon as it exists, checks the array and drops it. After each
    # yield the generator waits (bounded polling inside the task: there is no event for "the
    # worker freed a key") until the traced memory falls back below half an array, i.e. until
    # the worker has freed the value it just yielded. So at most one array is legitimately alive
    # when the generator builds the next one, and the traced peak must stay near one array:
    #   * the task keeping past values (collecting them into a result, or the generator frame or
    #     the driving loop holding them) keeps memory up: the wait times out and the task raises;
    #   * copying or pickling a value when it is stored pushes the peak to about two arrays.
    # Each line of peaks.txt is "<index> <peak bytes so far>", written once yield i was freed.
    peaks_path = tmp_path / "peaks.txt"

    @ray.remote
    def big_arrays(peaks_path, n):
        import time
        import tracemalloc

        import numpy as np

        tracing_here = not tracemalloc.is_tracing()
        tracemalloc.start()
        try:
            floor = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                array = np.full(BIG_ARRAY_BYTES, i, dtype=np.uint8)
                yield array
                del array
                deadline = time.monotonic() + 20
                while (current := tracemalloc.get_traced_memory()[0]) - floor > (
                    BIG_ARRAY_BYTES // 2
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"yield {i} was not freed after its ref was dropped: "
                            f"{current - floor} bytes still traced in the task's process"
                        )
                    time.sleep(0.005)
                peak = tracemalloc.get_traced_memory()[1] - floor
                with open(peaks_path, "a") as f:
                    f.write(f"{i} {peak}\n")
        finally:
            if tracing_here:
                tracemalloc.stop()

    # Not enumerate(): CPython's enumerate keeps its last (i, ref) tuple alive while it waits for
    # the next item, which would keep yield i alive while the generator waits for it to go.
    i = 0
    for ref in big_arrays.remote(str(peaks_path), 10):
        array = ray.get(ref, timeout=60)
        assert array.nbytes == BIG_ARRAY_BYTES
        assert array[0] == i and array[-1] == i
        del array, ref
        i += 1

    peaks = [int(line.split()[1]) for line in peaks_path.read_text().splitlines()]
    assert len(peaks) == 10
    assert max(peaks) < PEAK_LIMIT_BYTES, f"peaks in bytes: {peaks}"
