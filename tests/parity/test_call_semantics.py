"""Ray's call semantics that ordinary programs rely on (SPEC 3): calls run whether or not their
ref is kept, dropped generators run to their end, ``cancel()`` as Ray documents it, and the
generator details around it. Every test passes on Ray 2.60 and on daskgen.

Tasks run in other processes, so they report through files in ``tmp_path``
(``realcluster.file_signals``); the test waits on refs, or polls those files with a bound. No
test sleeps to synchronise.
"""

from __future__ import annotations

import os
import re

import pytest
import realcluster
from realcluster import HANG, wait_until

_mark, _wait_for = realcluster.file_signals()


def _first_line(error):
    """The first line of an error's message, without the colours Ray adds to its header."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines()[0]


def _files(directory, prefix):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefix))


# --- calls run whether or not their ref is kept ------------------------------------------------


def _counter(ray):
    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1

        def value(self):
            return self.n

    return Counter


def test_twenty_fire_and_forget_increments_all_run_before_the_next_call(ray):
    counter = _counter(ray).remote()
    for _ in range(20):
        counter.inc.remote()  # the ref is dropped at once
    assert ray.get(counter.value.remote(), timeout=HANG) == 20


def test_every_task_whose_ref_is_dropped_at_once_still_runs(ray, tmp_path):
    mark = _mark

    @ray.remote
    def side_effect(directory, i):
        mark(directory, f"ran-{i}")

    for i in range(10):
        side_effect.remote(str(tmp_path), i)
    wait_until(lambda: len(_files(tmp_path, "ran-")) == 10, "all 10 tasks ran", HANG)


def test_a_progress_actor_receives_every_report_sent_from_inside_tasks(ray):
    @ray.remote
    class Progress:
        def __init__(self):
            self.total = 0

        def report(self, amount):
            self.total += amount

        def get_total(self):
            return self.total

    @ray.remote
    def work(progress, i):
        progress.report.remote(i)  # fire and forget, from inside the task
        return i

    progress = Progress.remote()
    assert sum(ray.get([work.remote(progress, i) for i in range(10)], timeout=HANG)) == 45
    wait_until(
        lambda: ray.get(progress.get_total.remote(), timeout=HANG) == 45,
        "every report reached the actor",
        HANG,
    )


@pytest.mark.daskgen_only
def test_the_result_of_a_call_whose_ref_was_dropped_is_freed_once_it_has_run(ray, tmp_path):
    mark = _mark

    @ray.remote
    def big(directory):
        mark(directory, "ran")
        return b"x" * 200_000

    client = ray.get_client()

    def tasks():
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))

    baseline = tasks()
    big.remote(str(tmp_path))
    wait_until(lambda: (tmp_path / "ran").exists(), "the task ran", HANG)
    wait_until(lambda: tasks() <= baseline, "its result was freed", HANG)


def _gated_actor(ray):
    mark, wait_for = _mark, _wait_for

    @ray.remote
    class Gated:
        def __init__(self):
            self.calls = []

        def hold(self, directory):
            mark(directory, "holding")
            wait_for(directory, "go", HANG)
            self.calls.append("hold")
            return "held"

        def echo(self, value):
            self.calls.append(value)
            return value

        def history(self):
            return self.calls

    return Gated


@pytest.mark.beyond
def test_a_cancelled_queued_call_never_holds_back_the_calls_after_it(ray, tmp_path):
    # Ray 2.60 does not hold this: the call after a cancelled one waits 30 s for the missing
    # sequence number, then raises ActorUnavailableError ("Timed out waiting for seq_no").
    actor = _gated_actor(ray).remote()
    first = actor.hold.remote(str(tmp_path))
    wait_until(lambda: (tmp_path / "holding").exists(), "the first call started", HANG)
    queued = actor.echo.remote("queued")
    ray.cancel(queued)
    after = actor.echo.remote("after")
    _mark(str(tmp_path), "go")
    assert ray.get([first, after], timeout=HANG) == ["held", "after"]
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(queued, timeout=HANG)


def test_a_call_whose_argument_failed_never_holds_back_the_calls_after_it(ray):
    @ray.remote
    def boom():
        raise ValueError("the argument failed")

    actor = _gated_actor(ray).remote()
    failed = actor.echo.remote(boom.remote())
    after = actor.echo.remote("after")
    assert ray.get(after, timeout=HANG) == "after"
    with pytest.raises(ValueError, match="the argument failed"):
        ray.get(failed, timeout=HANG)
    assert ray.get(actor.history.remote(), timeout=HANG) == ["after"]


def test_calls_to_a_killed_actor_fail_with_rays_first_line(ray):
    counter = _counter(ray).remote()
    assert ray.get(counter.value.remote(), timeout=HANG) == 0
    ray.kill(counter)

    def died():  # Ray's kill is asynchronous: a call right after it may still run
        try:
            ray.get(counter.value.remote(), timeout=HANG)
        except ray.exceptions.ActorDiedError as error:
            return error
        return None

    error = wait_until(died, "a call to the killed actor failed", HANG)
    assert _first_line(error) == "The actor died unexpectedly before finishing this task."


# --- generators whose caller drops them --------------------------------------------------------


def _marking_generator(ray, **options):
    mark = _mark

    def produce(directory, n):
        try:
            for i in range(n):
                mark(directory, f"before-{i}")
                yield i
            mark(directory, "end")
        finally:
            mark(directory, "finally")

    return ray.remote(**options)(produce) if options else ray.remote(produce)


def test_a_streaming_generator_dropped_after_two_refs_runs_to_its_end(ray, tmp_path):
    gen = _marking_generator(ray).remote(str(tmp_path), 6)
    assert ray.get([next(gen), next(gen)], timeout=HANG) == [0, 1]
    del gen
    wait_until(lambda: (tmp_path / "end").exists(), "the generator ran to its end", HANG)
    assert _files(tmp_path, "before-") == [f"before-{i}" for i in range(6)]


@pytest.mark.parametrize("num_returns", ["dynamic", 5])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_generator_whose_refs_are_dropped_at_once_runs_to_its_end(ray, tmp_path, num_returns):
    _marking_generator(ray).options(num_returns=num_returns).remote(str(tmp_path), 5)
    wait_until(lambda: (tmp_path / "finally").exists(), "the generator ran to its end", HANG)
    assert (tmp_path / "end").exists()  # written before its finally block


def test_dropping_a_generator_paused_by_backpressure_lets_its_producer_run_to_its_end(
    ray, tmp_path
):
    produce = _marking_generator(ray, _generator_backpressure_num_objects=2)
    gen = produce.remote(str(tmp_path), 8)
    assert ray.get(next(gen), timeout=HANG) == 0
    # With one ref taken and two more made, the producer is paused: it got no further.
    wait_until(lambda: (tmp_path / "before-2").exists(), "the producer reached yield 2", HANG)
    assert not (tmp_path / "before-4").exists()
    del gen
    wait_until(lambda: (tmp_path / "end").exists(), "the producer ran to its end", HANG)


@pytest.mark.daskgen_only
def test_what_a_dropped_generator_yields_afterwards_is_freed(ray, tmp_path):
    client = ray.get_client()

    def tasks():
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))

    baseline = tasks()
    gen = _marking_generator(ray).remote(str(tmp_path), 50)
    next(gen)
    del gen
    wait_until(lambda: (tmp_path / "end").exists(), "the generator ran to its end", HANG)
    wait_until(lambda: tasks() <= baseline, "every yield was freed", HANG)


# --- cancel ------------------------------------------------------------------------------------


def _gate_tasks(ray):
    """``hold(dir, name)``: marks ``<name>-started``, then runs until ``<name>-go`` exists."""
    mark, wait_for = _mark, _wait_for

    @ray.remote
    def hold(directory, name):
        mark(directory, f"{name}-started")
        wait_for(directory, f"{name}-go", HANG)
        return name

    return hold


def test_a_pending_task_that_is_cancelled_never_runs_and_get_raises_task_cancelled_error(
    ray, tmp_path
):
    hold = _gate_tasks(ray)
    blockers = [hold.remote(str(tmp_path), f"blocker{i}") for i in range(2)]  # both CPUs
    wait_until(lambda: len(_files(tmp_path, "blocker")) == 2, "the blockers started", HANG)
    pending = hold.remote(str(tmp_path), "pending")
    ray.cancel(pending)
    with pytest.raises(ray.exceptions.TaskCancelledError) as info:
        ray.get(pending, timeout=HANG)
    assert not isinstance(info.value, ray.exceptions.RayTaskError)
    for i in range(2):
        _mark(str(tmp_path), f"blocker{i}-go")
    assert ray.get(blockers, timeout=HANG) == ["blocker0", "blocker1"]
    # Tasks with the same needs, submitted after, run: the cancelled one never did.
    for i in range(2):
        _mark(str(tmp_path), f"after{i}-go")
    assert ray.get([hold.remote(str(tmp_path), f"after{i}") for i in range(2)], timeout=HANG)
    assert not (tmp_path / "pending-started").exists()


def _spinning_task(ray, *, ignore_interrupt=False):
    mark = _mark

    @ray.remote
    def spin(directory):
        import time

        mark(directory, "started")
        deadline = time.monotonic() + HANG
        try:
            while time.monotonic() < deadline:  # pure Python: interruptible at any bytecode
                pass
        except KeyboardInterrupt:
            mark(directory, "interrupted")
            if ignore_interrupt:
                return "survived"
            raise
        finally:
            mark(directory, "finally")
        return "timed out"

    return spin


def test_cancel_raises_keyboard_interrupt_in_a_running_task_whose_finally_runs(ray, tmp_path):
    ref = _spinning_task(ray).remote(str(tmp_path))
    wait_until(lambda: (tmp_path / "started").exists(), "the task started", HANG)
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError) as info:
        ray.get(ref, timeout=HANG)
    assert isinstance(info.value, ray.exceptions.RayTaskError)  # raised inside the task
    assert re.match(r"ray::spin\(\) \(pid=\d+, ip=", _first_line(info.value))
    assert (tmp_path / "interrupted").exists() and (tmp_path / "finally").exists()


def test_a_running_task_that_catches_the_interrupt_and_returns_delivers_its_value(ray, tmp_path):
    ref = _spinning_task(ray, ignore_interrupt=True).remote(str(tmp_path))
    wait_until(lambda: (tmp_path / "started").exists(), "the task started", HANG)
    ray.cancel(ref)
    assert ray.get(ref, timeout=HANG) == "survived"


def test_after_cancelling_running_tasks_their_worker_slots_run_new_tasks(ray, tmp_path):
    spin = _spinning_task(ray)
    for i in range(2):
        (tmp_path / str(i)).mkdir()
    refs = [spin.remote(str(tmp_path / str(i))) for i in range(2)]
    for i in range(2):
        wait_until(lambda i=i: (tmp_path / str(i) / "started").exists(), "both started", HANG)
    for ref in refs:
        ray.cancel(ref)

    @ray.remote
    def quick(i):
        return i

    assert ray.get([quick.remote(i) for i in range(4)], timeout=HANG) == [0, 1, 2, 3]


def _stubborn_tasks(ray):
    mark = _mark

    @ray.remote
    def sleeper(directory, name):
        import time

        mark(directory, name)
        time.sleep(HANG)
        return "slept"

    @ray.remote
    def stubborn(directory, name):
        import time

        mark(directory, name)
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            try:
                time.sleep(0.01)
            except KeyboardInterrupt:
                pass
        return "never stopped"

    return sleeper, stubborn


@pytest.mark.parametrize("kind", ["sleeper", "stubborn"])
def test_force_cancel_stops_a_task_that_sleeps_or_ignores_the_interrupt_and_frees_its_slot(
    ray, tmp_path, kind
):
    task = dict(zip(["sleeper", "stubborn"], _stubborn_tasks(ray), strict=True))[kind]
    refs = [task.remote(str(tmp_path), f"started-{i}") for i in range(2)]
    wait_until(lambda: len(_files(tmp_path, "started-")) == 2, "both started", HANG)
    for ref in refs:
        ray.cancel(ref, force=True)

    @ray.remote
    def quick(i):
        return i

    # Both CPUs were busy for a minute: the new tasks run only if the slots were freed.
    assert ray.get([quick.remote(i) for i in range(4)], timeout=HANG / 2) == [0, 1, 2, 3]
    for ref in refs:
        with pytest.raises(ray.exceptions.TaskCancelledError) as info:
            ray.get(ref, timeout=HANG)
        assert not isinstance(info.value, ray.exceptions.RayTaskError)


def _parent_and_children(ray):
    mark, wait_for = _mark, _wait_for

    @ray.remote(num_cpus=0)
    def child(directory, i):
        mark(directory, f"child-{i}-started")
        try:
            for _ in range(int(HANG * 100)):  # until "go", checking every 10 ms
                if wait_for(directory, "go", 0.01):
                    break
        except KeyboardInterrupt:
            mark(directory, f"child-{i}-interrupted")
            raise
        mark(directory, f"child-{i}-done")
        return i

    @ray.remote(num_cpus=0)
    def parent(directory):
        children = [child.remote(directory, i) for i in range(2)]
        return ray.get(children)

    return parent


@pytest.mark.parametrize("recursive", [True, False])
def test_cancel_recursive_cancels_the_tasks_the_cancelled_task_submitted(ray, tmp_path, recursive):
    parent = _parent_and_children(ray).remote(str(tmp_path))
    wait_until(lambda: len(_files(tmp_path, "child-")) == 2, "both children started", HANG)
    ray.cancel(parent, recursive=recursive)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(parent, timeout=HANG)
    if recursive:
        wait_until(lambda: len(_files(tmp_path, "child-")) == 4, "both children interrupted", HANG)
        assert _files(tmp_path, "child-") == [
            "child-0-interrupted",
            "child-0-started",
            "child-1-interrupted",
            "child-1-started",
        ]
    else:
        _mark(str(tmp_path), "go")
        wait_until(lambda: len(_files(tmp_path, "child-")) == 4, "both children finished", HANG)
        assert "child-0-done" in _files(tmp_path, "child-")


def test_cancel_of_an_async_actor_method_raises_cancelled_error_in_its_coroutine(ray, tmp_path):
    mark = _mark

    @ray.remote
    class Waiter:
        async def wait(self, directory):
            import asyncio

            mark(directory, "started")
            try:
                await asyncio.sleep(HANG)
            except asyncio.CancelledError:
                mark(directory, "cancelled")
                raise
            return "waited"

        async def ping(self):
            return "pong"

    actor = Waiter.remote()
    ref = actor.wait.remote(str(tmp_path))
    wait_until(lambda: (tmp_path / "started").exists(), "the method started", HANG)
    ray.cancel(ref)
    # Ray's own documentation catches this with `except ray.exceptions.RayTaskError`.
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(ref, timeout=HANG)
    assert isinstance(info.value, ray.exceptions.TaskCancelledError)
    wait_until(lambda: (tmp_path / "cancelled").exists(), "CancelledError reached it", HANG)
    assert ray.get(actor.ping.remote(), timeout=HANG) == "pong"  # the actor lives on


def test_cancel_of_a_running_sync_actor_method_lets_it_finish_and_get_raises_cancelled(
    ray, tmp_path
):
    """Ray does not interrupt a threaded actor's running method (the actor has state): it runs
    to its end, the calls after it run, and ``get`` of the cancelled call raises
    ``TaskCancelledError`` (not a ``RayTaskError``)."""
    mark, wait_for = _mark, _wait_for

    @ray.remote
    class Worker:
        def work(self, directory):
            mark(directory, "started")
            wait_for(directory, "go", HANG)
            mark(directory, "finished")
            return "finished"

        def after(self):
            return "after"

    actor = Worker.remote()
    ref = actor.work.remote(str(tmp_path))
    wait_until(lambda: (tmp_path / "started").exists(), "the method started", HANG)
    ray.cancel(ref)
    later = actor.after.remote()
    _mark(str(tmp_path), "go")
    with pytest.raises(ray.exceptions.TaskCancelledError) as info:
        ray.get(ref, timeout=HANG)
    assert not isinstance(info.value, ray.exceptions.RayTaskError)
    assert re.match(r"Task: \S+ was cancelled\.$", _first_line(info.value))
    assert ray.get(later, timeout=HANG) == "after"
    assert (tmp_path / "finished").exists()  # it was not interrupted


def test_cancel_with_force_of_an_actor_call_raises_value_error(ray):
    counter = _counter(ray).remote()
    ref = counter.value.remote()
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        ray.cancel(ref, force=True)


# --- generator details -------------------------------------------------------------------------


def test_get_of_a_streaming_generator_returns_the_generator_itself(ray):
    @ray.remote
    def numbers(n):
        for i in range(n):  # noqa: UP028 (`yield from range(n)` fails on Ray 2.60 streaming)
            yield i

    gen = numbers.remote(3)
    assert ray.get(gen) is gen
    assert [ray.get(r, timeout=HANG) for r in gen] == [0, 1, 2]


def test_after_cancel_next_ready_is_true_until_the_error_ref_is_taken(ray, tmp_path):
    wait_for = _wait_for

    @ray.remote
    def slow(directory):
        for i in range(1000):
            yield i
            wait_for(directory, "never", 0.05)

    gen = slow.remote(str(tmp_path))
    assert ray.get(next(gen), timeout=HANG) == 0
    ray.cancel(gen)
    assert gen.next_ready()
    assert not gen.is_finished()
    with pytest.raises(ray.exceptions.TaskCancelledError) as info:
        ray.get(next(gen), timeout=HANG)
    assert isinstance(info.value, ray.exceptions.RayTaskError)
    wait_until(gen.is_finished, "the generator finished", HANG)
    assert not gen.next_ready()
    with pytest.raises(StopIteration):
        next(gen)


def test_as_instanceof_cause_gives_an_error_that_is_both_ray_task_error_and_the_cause(ray):
    @ray.remote
    def boom():
        raise ValueError("boom")

    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(boom.remote(), timeout=HANG)
    error = info.value
    converted = error.as_instanceof_cause()
    assert converted is not error
    assert isinstance(converted, ValueError) and isinstance(converted, ray.exceptions.RayTaskError)
    assert isinstance(converted.cause, ValueError) and str(converted.cause) == "boom"
    assert error.args == (error.cause,)
    assert re.match(r"ray::boom\(\) \(pid=\d+, ip=", _first_line(error))
    assert str(error).splitlines()[-1] == "ValueError: boom"


# --- refs handed to another task before their value exists ----------------------------------


def _producers(ray):
    @ray.remote
    class Producer:
        def values(self, n, size):
            import numpy as np

            for i in range(n):
                yield np.full(size, i, dtype=np.uint8)

    @ray.remote
    def values(n, size):
        import numpy as np

        for i in range(n):
            yield np.full(size, i, dtype=np.uint8)

    @ray.remote
    def first_bytes(refs):
        return [int(ray.get(ref)[0]) for ref in refs]

    return Producer, values, first_bytes


def _refs_of(call, mode, n, size):
    if mode == "static":
        return list(call.options(num_returns=n).remote(n, size))
    if mode == "dynamic":
        return call.options(num_returns="dynamic").remote(n, size)  # the outer ref
    return call.remote(n, size)  # streaming: its refs are taken below, as they arrive


@pytest.mark.parametrize("size", [16, 1 << 20], ids=["small", "1MB"])
@pytest.mark.parametrize("mode", ["static", "dynamic", "streaming"])
@pytest.mark.parametrize("producer", ["actor", "task"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_refs_passed_nested_while_their_generator_runs_always_resolve_in_the_task(
    ray, producer, mode, size
):
    Producer, values, first_bytes = _producers(ray)
    call = Producer.remote().values if producer == "actor" else values
    n, rounds = 10, int(os.environ.get("DASKGEN_RACE_ROUNDS", "8"))
    for _ in range(rounds):
        refs = _refs_of(call, mode, n, size)
        if mode == "dynamic":
            refs = list(ray.get(refs, timeout=HANG))
        elif mode == "streaming":
            refs = list(refs)
        assert ray.get(first_bytes.remote(refs), timeout=HANG) == list(range(n))


def test_refs_of_tasks_just_submitted_passed_nested_to_an_actor_at_once_resolve_there(ray):
    """An actor call travels straight to the actor's worker, so the ref of a task made just
    before it may reach the scheduler (taken by the actor's process) before the task does:
    the ref waits for it, as on Ray."""

    @ray.remote
    def value(i):
        return i

    @ray.remote
    class Reader:
        def first(self, refs):
            return ray.get(refs[0])

    reader = Reader.remote()
    calls = [reader.first.remote([value.remote(i)]) for i in range(100)]
    assert ray.get(calls, timeout=HANG) == list(range(100))
    for i in range(50):  # one at a time too
        assert ray.get(reader.first.remote([value.remote(i)]), timeout=HANG) == i
