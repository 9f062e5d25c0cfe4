"""Streaming generators, ``ObjectRefGenerator`` (SPEC section 5).

Several tests need the producer to stop at a known point until the test lets it go on. Ray and
daskgen share no event primitive the test can set from outside, so the gate is a file in
``tmp_path``: the task polls for it (a short sleep inside the task, with a 30 s bound so a broken
implementation fails instead of hanging) and the test creates it. The test never sleeps to wait
for the task; it only waits on refs, ``wait()`` or on files the task writes.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import time

import pytest
from generators_shared import counting_generator

GATE_TIMEOUT_S = 30


def _file_tools():
    """Helpers for use inside tasks (nested, so they pickle by value: Ray workers cannot import
    this test module)."""

    def wait_for_file(path, timeout):
        import os
        import time

        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def record(path, text):
        with open(path, "a") as f:
            f.write(f"{text}\n")

    return wait_for_file, record


def _lines(path):
    return path.read_text().split() if path.exists() else []


def _wait_until(condition, what, timeout=60):
    """Bounded polling wait for something a task does asynchronously (writes a file)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.01)


def _counting_generator(ray):
    return counting_generator(ray)


def _gated_generator(ray):
    """Yields 0, then waits for the gate file, then yields whether the gate opened in time."""
    wait_for_file, _ = _file_tools()

    @ray.remote
    def gated(gate):
        yield 0
        yield wait_for_file(gate, GATE_TIMEOUT_S)

    return gated


def _blocked_task(ray):
    """A plain task that stays unfinished until its gate file exists."""
    wait_for_file, _ = _file_tools()

    @ray.remote
    def blocked(gate):
        return wait_for_file(gate, GATE_TIMEOUT_S)

    return blocked


# --- what .remote() returns ----------------------------------------------------------------------


def test_a_generator_function_returns_an_object_ref_generator_by_default(ray):
    count, _ = _counting_generator(ray)

    gen = count.remote(2)

    assert type(gen).__name__ == "ObjectRefGenerator"
    assert isinstance(gen, ray.ObjectRefGenerator)
    assert ray.get(list(gen), timeout=60) == [0, 10]


def test_num_returns_streaming_returns_an_object_ref_generator(ray):
    @ray.remote(num_returns="streaming")
    def count(n):
        # Not `yield from range(n)`: Ray 2.60's streaming executor fails on it
        # (AttributeError: 'range_iterator' object has no attribute 'send').
        for i in range(n):  # noqa: UP028
            yield i

    gen = count.remote(2)

    assert isinstance(gen, ray.ObjectRefGenerator)
    assert ray.get(list(gen), timeout=60) == [0, 1]


def test_num_returns_streaming_can_be_set_with_options(ray):
    count, _ = _counting_generator(ray)

    gen = count.options(num_returns="streaming").remote(2)

    assert isinstance(gen, ray.ObjectRefGenerator)
    assert ray.get(list(gen), timeout=60) == [0, 10]


def test_a_streaming_generator_cannot_be_pickled(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(1)

    with pytest.raises(TypeError):
        pickle.dumps(gen)


# --- next() and iteration ------------------------------------------------------------------------


def test_next_returns_refs_to_the_yields_in_order(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(3)

    refs = [next(gen), next(gen), next(gen)]

    assert all(isinstance(ref, ray.ObjectRef) for ref in refs)
    assert ray.get(refs, timeout=60) == [0, 10, 20]


def test_next_raises_stop_iteration_at_the_end_and_on_every_later_call(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(2)
    next(gen)
    next(gen)

    for _ in range(3):
        with pytest.raises(StopIteration):
            next(gen)


def test_a_for_loop_over_the_generator_gets_every_ref(ray):
    count, _ = _counting_generator(ray)

    values = [ray.get(ref, timeout=60) for ref in count.remote(4)]

    assert values == [0, 10, 20, 30]


def test_a_generator_with_zero_yields_stops_at_once(ray):
    count, _ = _counting_generator(ray)

    assert list(count.remote(0)) == []


def test_next_returns_a_ref_as_soon_as_its_yield_exists(ray, tmp_path):
    # The producer yields 0 and then waits for the gate, which the test opens only after it has
    # the value of yield 0. If next() waited for the task to end, the producer would time out
    # and yield False.
    gated = _gated_generator(ray)
    gate = tmp_path / "gate"
    gen = gated.remote(str(gate))
    try:
        assert ray.get(next(gen), timeout=60) == 0
    finally:
        gate.touch()

    assert ray.get(next(gen), timeout=60) is True


# --- asyncio -------------------------------------------------------------------------------------


def test_async_for_iterates_the_refs_from_asyncio_code(ray):
    count, _ = _counting_generator(ray)

    async def consume():
        return [await ref async for ref in count.remote(3)]

    assert asyncio.run(consume()) == [0, 10, 20]


def test_anext_returns_the_next_ref_from_asyncio_code(ray):
    count, _ = _counting_generator(ray)

    async def consume():
        gen = count.remote(2)
        first = await gen.__anext__()
        second = await gen.__anext__()
        return await first, await second

    assert asyncio.run(consume()) == (0, 10)


def test_anext_raises_stop_async_iteration_at_the_end_and_on_every_later_call(ray):
    count, _ = _counting_generator(ray)

    async def consume():
        gen = count.remote(1)
        await gen.__anext__()
        stops = 0
        for _ in range(3):
            try:
                await gen.__anext__()
            except StopAsyncIteration:
                stops += 1
        return stops

    assert asyncio.run(consume()) == 3


def test_awaiting_a_streamed_ref_gives_its_value(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(1)
    ref = next(gen)

    async def await_it():
        return await ref

    assert asyncio.run(await_it()) == 0


def test_async_for_delivers_the_raising_ref_and_then_stops(ray):
    count, boom = _counting_generator(ray)

    async def consume():
        outcomes = []
        async for ref in count.remote(5, fail_at=1):
            try:
                outcomes.append(await ref)
            except boom:
                outcomes.append("boom")
        return outcomes

    assert asyncio.run(consume()) == [0, "boom"]


# --- exceptions ----------------------------------------------------------------------------------


def test_refs_yielded_before_an_exception_keep_their_values(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(5, fail_at=2)

    first, second = next(gen), next(gen)

    assert ray.get([first, second], timeout=60) == [0, 10]


def test_the_ref_after_the_last_yield_raises_the_users_exception(ray):
    count, boom = _counting_generator(ray)
    gen = count.remote(5, fail_at=2)
    next(gen)
    next(gen)

    failing = next(gen)

    with pytest.raises(boom, match="boom at 2") as info:
        ray.get(failing, timeout=60)
    assert isinstance(info.value, ray.exceptions.RayTaskError)


def test_next_raises_stop_iteration_after_the_raising_ref(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(5, fail_at=2)

    refs = list(gen)

    assert len(refs) == 3
    with pytest.raises(StopIteration):
        next(gen)


# --- completed(), next_ready(), is_finished() ----------------------------------------------------


def test_completed_resolves_only_when_the_task_ends(ray, tmp_path):
    gated = _gated_generator(ray)
    gate = tmp_path / "gate"
    gen = gated.remote(str(gate))
    try:
        assert ray.get(next(gen), timeout=60) == 0  # the producer is now waiting at the gate
        ready, not_ready = ray.wait([gen.completed()], timeout=0)
        assert ready == []
    finally:
        gate.touch()

    assert ray.get(gen.completed(), timeout=60) is None


def test_completed_does_not_raise_when_the_generator_raised(ray):
    # The user's exception travels as a streamed item; completed() raises only on a system
    # failure or a cancel.
    count, _ = _counting_generator(ray)
    gen = count.remote(5, fail_at=1)

    assert ray.get(gen.completed(), timeout=60) is None


def test_next_ready_is_true_when_the_next_yield_exists(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(2)
    ready, _ = ray.wait([gen], timeout=60)
    assert len(ready) == 1 and ready[0] is gen

    assert gen.next_ready() is True


def test_next_ready_is_false_while_the_next_yield_is_pending(ray, tmp_path):
    gated = _gated_generator(ray)
    gate = tmp_path / "gate"
    gen = gated.remote(str(gate))
    try:
        assert ray.get(next(gen), timeout=60) == 0  # the producer is now waiting at the gate
        assert gen.next_ready() is False
    finally:
        gate.touch()


def test_next_ready_is_false_once_the_generator_is_exhausted(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(2)
    assert len(list(gen)) == 2  # list() ran next() up to StopIteration

    assert gen.next_ready() is False


def test_is_finished_is_false_while_the_task_runs(ray, tmp_path):
    gated = _gated_generator(ray)
    gate = tmp_path / "gate"
    gen = gated.remote(str(gate))
    try:
        assert ray.get(next(gen), timeout=60) == 0  # the producer is now waiting at the gate
        assert gen.is_finished() is False
    finally:
        gate.touch()


def test_is_finished_is_false_while_yields_are_untaken_after_the_task_ended(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(2)
    ray.get(gen.completed(), timeout=60)
    next(gen)

    assert gen.is_finished() is False


def test_is_finished_is_true_once_the_generator_is_exhausted(ray):
    # Ray 2.60 may already say True once every ref is taken and completed() has resolved, but
    # not reliably (the end of the stream reaches the caller separately), so this checks the
    # state after next() raised StopIteration.
    count, _ = _counting_generator(ray)
    gen = count.remote(2)
    assert len(list(gen)) == 2

    assert gen.is_finished() is True


def test_is_finished_is_true_once_a_failed_generator_is_exhausted(ray):
    count, _ = _counting_generator(ray)
    gen = count.remote(5, fail_at=1)
    assert len(list(gen)) == 2

    assert gen.is_finished() is True


# --- unsupported generator protocol --------------------------------------------------------------


@pytest.mark.parametrize(
    "method, args", [("send", (None,)), ("throw", (ValueError("x"),)), ("close", ())]
)
def test_send_throw_and_close_raise_not_implemented_error(ray, method, args):
    count, _ = _counting_generator(ray)
    gen = count.remote(1)

    with pytest.raises(NotImplementedError):
        getattr(gen, method)(*args)


@pytest.mark.parametrize(
    "method, args", [("asend", (None,)), ("athrow", (ValueError("x"),)), ("aclose", ())]
)
def test_asend_athrow_and_aclose_raise_not_implemented_error(ray, method, args):
    count, _ = _counting_generator(ray)
    gen = count.remote(1)

    async def call():
        await getattr(gen, method)(*args)

    with pytest.raises(NotImplementedError):
        asyncio.run(call())


# --- wait() --------------------------------------------------------------------------------------


def test_wait_counts_a_generator_ready_when_its_next_ref_exists(ray, tmp_path):
    gated = _gated_generator(ray)
    blocked = _blocked_task(ray)
    gate, blocker_gate = tmp_path / "gate", tmp_path / "blocker-gate"
    gen = gated.remote(str(gate))
    blocker = blocked.remote(str(blocker_gate))
    try:
        ready, not_ready = ray.wait([gen, blocker], num_returns=1, timeout=60)
        assert len(ready) == 1 and ready[0] is gen
        assert not_ready == [blocker]
    finally:
        gate.touch()
        blocker_gate.touch()


def test_wait_does_not_count_a_generator_whose_next_yield_is_pending(ray, tmp_path):
    gated = _gated_generator(ray)
    blocked = _blocked_task(ray)
    gate, blocker_gate = tmp_path / "gate", tmp_path / "blocker-gate"
    gen = gated.remote(str(gate))
    blocker = blocked.remote(str(blocker_gate))
    try:
        assert ray.get(next(gen), timeout=60) == 0  # the producer is now waiting at the gate
        ready, not_ready = ray.wait([gen, blocker], num_returns=1, timeout=0)
        assert ready == []
        assert len(not_ready) == 2 and not_ready[0] is gen and not_ready[1] == blocker
    finally:
        gate.touch()
        blocker_gate.touch()


def test_wait_counts_an_exhausted_generator_ready(ray, tmp_path):
    count, _ = _counting_generator(ray)
    blocked = _blocked_task(ray)
    blocker_gate = tmp_path / "blocker-gate"
    gen = count.remote(2)
    ray.get(gen.completed(), timeout=60)
    next(gen)
    next(gen)
    blocker = blocked.remote(str(blocker_gate))
    try:
        ready, not_ready = ray.wait([gen, blocker], num_returns=1, timeout=60)
        assert len(ready) == 1 and ready[0] is gen
        assert not_ready == [blocker]
    finally:
        blocker_gate.touch()


# --- backpressure --------------------------------------------------------------------------------

# A pause is the absence of progress, which no event can signal. The test first waits (bounded
# polling) until the producer has started N yields, then watches its progress file for a quiet
# window and fails as soon as the producer gets further than allowed. Unpaused, the producer
# below starts all its 10 yields within milliseconds, so a 1 s window is far longer than a
# broken implementation needs to show itself. Ray 2.60 allows no slack: with N=2 and nothing
# taken it starts yields 0 and 1 and stays inside yield 1; each next() lets exactly one more
# yield start.
BACKPRESSURE = 2
QUIET_WINDOW_S = 1.0


def _backpressured_producer(ray):
    _, record = _file_tools()

    @ray.remote(_generator_backpressure_num_objects=BACKPRESSURE)
    def producer(progress, n):
        for i in range(n):
            record(progress, i)  # one line per yield started
            yield i
        record(progress, "done")

    return producer


def _assert_progress_stays_at_most(progress, limit):
    deadline = time.monotonic() + QUIET_WINDOW_S
    while time.monotonic() < deadline:
        started = len(_lines(progress))
        assert started <= limit, f"producer started {started} yields, limit {limit}"
        time.sleep(0.01)


def test_backpressure_pauses_the_producer_while_n_yields_are_untaken(ray, tmp_path):
    producer = _backpressured_producer(ray)
    progress = tmp_path / "progress"

    gen = producer.remote(str(progress), 10)
    try:
        _wait_until(lambda: len(_lines(progress)) >= BACKPRESSURE, "the producer started N yields")

        _assert_progress_stays_at_most(progress, BACKPRESSURE)
    finally:
        list(gen)  # drain, so the paused producer finishes and frees its CPU


def test_backpressure_lets_the_producer_yield_one_more_for_each_ref_taken(ray, tmp_path):
    producer = _backpressured_producer(ray)
    progress = tmp_path / "progress"
    gen = producer.remote(str(progress), 10)
    try:
        _wait_until(lambda: len(_lines(progress)) >= BACKPRESSURE, "the producer started N yields")

        assert ray.get(next(gen), timeout=60) == 0

        _wait_until(lambda: len(_lines(progress)) >= BACKPRESSURE + 1, "the producer went on")
        _assert_progress_stays_at_most(progress, BACKPRESSURE + 1)
    finally:
        list(gen)  # drain, so the paused producer finishes and frees its CPU


def test_a_backpressured_generator_delivers_every_value_in_order(ray, tmp_path):
    producer = _backpressured_producer(ray)

    gen = producer.remote(str(tmp_path / "progress"), 10)

    assert [ray.get(ref, timeout=60) for ref in gen] == list(range(10))


def test_without_backpressure_the_producer_runs_to_the_end_while_nothing_is_taken(ray, tmp_path):
    _, record = _file_tools()

    @ray.remote
    def producer(progress, n):
        for i in range(n):
            record(progress, i)
            yield i
        record(progress, "done")

    progress = tmp_path / "progress"
    gen = producer.remote(str(progress), 10)

    _wait_until(lambda: "done" in _lines(progress), "the producer finished")
    assert [ray.get(ref, timeout=60) for ref in gen] == list(range(10))


# --- cancel --------------------------------------------------------------------------------------


def _endless_producer(ray):
    """Yields every 10 ms for 100 s unless stopped; records 'stopped' when its frame ends."""
    _, record = _file_tools()

    @ray.remote
    def endless(progress):
        import time

        try:
            for i in range(10_000):
                yield i
                time.sleep(0.01)
            record(progress, "finished")
        finally:
            record(progress, "stopped")

    return endless


def _start_and_cancel(ray, tmp_path):
    endless = _endless_producer(ray)
    progress = tmp_path / "progress"
    gen = endless.remote(str(progress))
    assert ray.get(next(gen), timeout=60) == 0
    ray.cancel(gen)
    return gen, progress


def test_after_cancel_the_next_ref_raises_task_cancelled_error(ray, tmp_path):
    # Ray skips the yields made but not yet taken: the very next ref is the cancellation.
    gen, _ = _start_and_cancel(ray, tmp_path)

    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(next(gen), timeout=60)


def test_after_the_cancelled_ref_next_raises_stop_iteration(ray, tmp_path):
    gen, _ = _start_and_cancel(ray, tmp_path)
    next(gen)

    for _ in range(2):
        with pytest.raises(StopIteration):
            next(gen)


def test_after_cancel_completed_raises_task_cancelled_error(ray, tmp_path):
    gen, _ = _start_and_cancel(ray, tmp_path)

    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(gen.completed(), timeout=60)


def test_cancel_stops_the_producer(ray, tmp_path):
    # The producer's finally block records 'stopped'; it would need 100 s to finish on its own.
    _, progress = _start_and_cancel(ray, tmp_path)

    _wait_until(lambda: "stopped" in _lines(progress), "the producer stopped")
    assert "finished" not in _lines(progress)


# --- lifetime ------------------------------------------------------------------------------------


def _scheduler_task_count(ray):
    return ray.get_client().run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


@pytest.mark.daskgen_only
def test_dropping_the_generator_releases_the_refs_it_still_holds(ray):
    count, _ = _counting_generator(ray)
    gc.collect()
    baseline = _scheduler_task_count(ray)
    gen = count.remote(5)
    ray.get(gen.completed(), timeout=60)
    first = next(gen)
    assert ray.get(first, timeout=60) == 0
    assert _scheduler_task_count(ray) > baseline  # the yields are stored as their own keys

    del first, gen
    gc.collect()

    # Release travels client -> scheduler asynchronously, hence a bounded polling wait.
    _wait_until(
        lambda: _scheduler_task_count(ray) <= baseline,
        f"the scheduler's task count returned to {baseline}",
        timeout=30,
    )
