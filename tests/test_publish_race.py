"""Under load, no published yield is ever released before the caller holds it.

If a key could be freed between "the worker stored it" and "the caller's client holds it", a
consumer that takes its refs late would find some values gone. These tests publish thousands of
yields from many concurrent generators and take every ref only after the producers finished.
"""

from __future__ import annotations

import gc
import time

import pytest

pytestmark = pytest.mark.daskgen_only


def _scheduler_tasks(ray) -> int:
    return ray.get_client().run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def _wait_for_count(ray, at_most: int, timeout: float = 30) -> int:
    # Releases travel asynchronously to the scheduler: bounded wait for the count to settle.
    deadline = time.monotonic() + timeout
    while (n := _scheduler_tasks(ray)) > at_most and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return n


def _producer(ray):
    @ray.remote
    def produce(gen_id, n):
        for i in range(n):
            yield (gen_id, i)

    return produce


def test_many_concurrent_streams_taken_late_lose_no_yield(ray):
    produce = _producer(ray)
    baseline = _scheduler_tasks(ray)
    gens = [produce.remote(g, 200) for g in range(30)]
    # every producer has finished before any ref is taken
    ray.get([g.completed() for g in gens], timeout=120)
    for g_id, gen in enumerate(gens):
        refs = list(gen)
        assert ray.get(refs, timeout=60) == [(g_id, i) for i in range(200)]
    del gens, gen, refs
    assert _wait_for_count(ray, baseline) <= baseline


def test_many_concurrent_dynamic_generators_taken_late_lose_no_yield(ray):
    produce = _producer(ray)
    baseline = _scheduler_tasks(ray)
    outer = [produce.options(num_returns="dynamic").remote(g, 200) for g in range(30)]
    ray.wait(outer, num_returns=len(outer), timeout=120)
    for g_id, ref in enumerate(outer):
        values = ray.get(list(ray.get(ref, timeout=60)), timeout=60)
        assert values == [(g_id, i) for i in range(200)]
    del outer, ref
    assert _wait_for_count(ray, baseline) <= baseline


def test_static_refs_dropped_while_their_generators_run_are_freed_and_the_kept_ones_stay(ray):
    produce = _producer(ray)
    baseline = _scheduler_tasks(ray)
    kept = []
    for g in range(30):
        refs = produce.options(num_returns=50).remote(g, 50)
        kept.append(refs[49])  # drop refs 0..48 at once, most before they are even published
        del refs
    assert ray.get(kept, timeout=120) == [(g, 49) for g in range(30)]
    del kept
    assert _wait_for_count(ray, baseline) <= baseline


def test_a_yield_the_worker_cannot_store_fails_the_stream_instead_of_shortening_it(ray):
    # sys.getsizeof (which Dask's sizeof uses) raising makes storing the value on the worker
    # fail: the stream must end with that error, never quietly after the values stored before.
    @ray.remote
    def produce():
        class Unmeasurable:
            def __sizeof__(self):
                raise RuntimeError("cannot measure me")

        yield 1
        yield Unmeasurable()
        yield 3

    gen = produce.remote()
    with pytest.raises(Exception, match="cannot measure me"):
        for ref in gen:
            ray.get(ref, timeout=60)
