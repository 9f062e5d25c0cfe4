"""Actors as Ray users write them: lifetime (an actor ends with its last handle, detached ones
live until kill), concurrency groups, max_pending_calls, the class's generator backpressure,
the options Ray accepts and rejects, methods looked up on the class, async generator methods.

Everything here passes on Ray 2.60 and on daskgen (``DASKGEN_TEST_BACKEND=ray``), except what is
marked ``beyond``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import realcluster
from realcluster import HANG, wait_until

_mark, _wait_for = realcluster.file_signals()


def _gone(ray, name):
    """Whether no live actor has this name (get_actor raises ValueError, as in Ray)."""
    try:
        handle = ray.get_actor(name)
    except ValueError:
        return True
    del handle
    return False


def _recorder(ray, **options):
    class Recorder:
        def __init__(self, directory):
            self.directory = directory

        def record(self, i):
            _mark(self.directory, f"call-{i:03d}")
            return i

        def ping(self):
            return "pong"

    return ray.remote(**options)(Recorder) if options else ray.remote(Recorder)


# --- lifetime --------------------------------------------------------------------------------


def test_an_actor_ends_once_its_last_handle_is_dropped_after_running_the_calls_sent(ray, tmp_path):
    actor = _recorder(ray).options(name="ends-with-its-handle").remote(str(tmp_path))
    assert ray.get(actor.ping.remote(), timeout=HANG) == "pong"
    for i in range(20):
        actor.record.remote(i)  # fire and forget
    del actor
    wait_until(lambda: len(list(tmp_path.glob("call-*"))) == 20, "every call ran", HANG)
    wait_until(lambda: _gone(ray, "ends-with-its-handle"), "the actor ended", HANG)


def test_a_handle_held_by_a_task_keeps_the_actor_alive_after_the_driver_dropped_its_own(
    ray, tmp_path
):
    actor = _recorder(ray).options(name="held-by-a-task").remote(str(tmp_path))

    @ray.remote
    def use_later(handle, directory):
        assert _wait_for(directory, "go", 60)
        return ray.get(handle.ping.remote())

    result = use_later.remote(actor, str(tmp_path))
    del actor
    _mark(str(tmp_path), "go")
    assert ray.get(result, timeout=HANG) == "pong"
    del result
    wait_until(lambda: _gone(ray, "held-by-a-task"), "the actor ended with the task", HANG)


def test_a_handle_kept_by_another_actor_keeps_the_actor_alive(ray, tmp_path):
    actor = _recorder(ray).options(name="kept-by-an-actor").remote(str(tmp_path))

    @ray.remote
    class Holder:
        def __init__(self, handle):
            self.handle = handle

        def ask(self):
            return ray.get(self.handle.ping.remote())

        def forget(self):
            self.handle = None

    holder = Holder.remote(actor)
    del actor
    assert ray.get(holder.ask.remote(), timeout=HANG) == "pong"
    assert not _gone(ray, "kept-by-an-actor")
    ray.get(holder.forget.remote(), timeout=HANG)
    wait_until(lambda: _gone(ray, "kept-by-an-actor"), "the actor ended", HANG)


def test_a_detached_actor_lives_on_without_handles_until_killed(ray, tmp_path):
    actor = _recorder(ray).options(name="detached-one", lifetime="detached").remote(str(tmp_path))
    assert ray.get(actor.ping.remote(), timeout=HANG) == "pong"
    del actor
    again = ray.get_actor("detached-one")
    assert ray.get(again.ping.remote(), timeout=HANG) == "pong"
    ray.kill(again)
    wait_until(lambda: _gone(ray, "detached-one"), "the killed actor's name is free", HANG)


@pytest.mark.parametrize("where", ["decorator", "options"])
def test_a_lifetime_other_than_detached_or_non_detached_is_rejected(ray, where):
    with pytest.raises(ValueError, match="actor `lifetime` argument must be one of"):
        if where == "decorator":
            _recorder(ray, lifetime="forever")
        else:
            _recorder(ray).options(lifetime="forever")
    actor = _recorder(ray).options(lifetime="non_detached").remote(".")
    assert ray.get(actor.ping.remote(), timeout=HANG) == "pong"


# --- options ---------------------------------------------------------------------------------


def test_max_retries_on_a_class_is_rejected_as_ray_rejects_it(ray):
    with pytest.raises(ValueError, match="Invalid option keyword max_retries for actors"):
        _recorder(ray, max_retries=3)


def test_enable_task_events_is_accepted(ray):
    actor = _recorder(ray, enable_task_events=False).remote(".")
    assert ray.get(actor.ping.remote(), timeout=HANG) == "pong"


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, "must be > 0 to cap the actor's total unconsumed generator objects"),
        (-2, ValueError, "or -1 to disable. Got -2."),
        ("x", TypeError, "The type of keyword '_actor_generator_backpressure_num_objects'"),
    ],
)
def test_the_actor_generator_backpressure_option_is_checked_as_ray_checks_it(
    ray, value, error, message
):
    with pytest.raises(error, match=message):
        _recorder(ray, _actor_generator_backpressure_num_objects=value)


def test_the_classes_generator_backpressure_pauses_its_generator_methods(ray, tmp_path):
    @ray.remote(_actor_generator_backpressure_num_objects=2, max_concurrency=2)
    class Producer:
        def __init__(self):
            self.started = 0

        def produce(self, n):
            for i in range(n):
                self.started = i + 1
                yield i

        def progress(self):
            return self.started

    producer = Producer.remote()
    gen = producer.produce.remote(10)
    wait_until(lambda: ray.get(producer.progress.remote()) >= 2, "two yields started", HANG)
    # Unpaused it would start all ten within milliseconds; each check is a round trip.
    for _ in range(20):
        assert ray.get(producer.progress.remote(), timeout=HANG) <= 3
    assert [ray.get(r, timeout=HANG) for r in gen] == list(range(10))


def test_max_pending_calls_raises_rays_error_once_exceeded(ray, tmp_path):
    @ray.remote(max_pending_calls=2)
    class Waiter:
        def wait(self, directory):
            return _wait_for(directory, "go", 60)

    waiter = Waiter.remote()
    refs = [waiter.wait.remote(str(tmp_path)) for _ in range(2)]
    with pytest.raises(ray.exceptions.PendingCallsLimitExceeded, match="could not be submitted"):
        waiter.wait.remote(str(tmp_path))
    _mark(str(tmp_path), "go")
    assert ray.get(refs, timeout=HANG) == [True, True]
    assert ray.get(waiter.wait.remote(str(tmp_path)), timeout=HANG) is True  # room again


# --- concurrency groups ------------------------------------------------------------------------


def _grouped(ray):
    @ray.remote(concurrency_groups={"io": 2, "compute": 1})
    class Grouped:
        def __init__(self):
            self.lock = threading.Lock()
            self.running = {"io": 0, "compute": 0, "default": 0}
            self.most = {"io": 0, "compute": 0, "default": 0}

        def _enter(self, group):
            with self.lock:
                self.running[group] += 1
                self.most[group] = max(self.most[group], self.running[group])

        def _leave(self, group):
            with self.lock:
                self.running[group] -= 1

        def _together(self, group, directory, i, other):
            # Waits (bounded) for the other call of the pair to start too: True if it did.
            self._enter(group)
            try:
                _mark(directory, f"{group}-{i}")
                return _wait_for(directory, f"{group}-{other}", 5)
            finally:
                self._leave(group)

        @ray.method(concurrency_group="io")
        def io(self, directory, i, other):
            return self._together("io", directory, i, other)

        @ray.method(concurrency_group="compute")
        def compute(self, directory, i, other):
            return self._together("compute", directory, i, other)

        def default(self, directory, i, other):
            return self._together("default", directory, i, other)

        def most_at_once(self):
            return dict(self.most)

    return Grouped


def test_methods_of_a_concurrency_group_run_up_to_its_limit_at_once(ray, tmp_path):
    grouped = _grouped(ray).remote()
    d = str(tmp_path)
    # io (2): the pair meets; compute (1) and the default group (max_concurrency 1) run one
    # at a time, so the first of each pair waits for the second in vain.
    assert ray.get([grouped.io.remote(d, 0, 1), grouped.io.remote(d, 1, 0)], timeout=HANG) == [
        True,
        True,
    ]
    compute = [grouped.compute.remote(d, 0, 1), grouped.compute.remote(d, 1, 0)]
    assert ray.get(compute, timeout=HANG) == [False, True]
    most = ray.get(grouped.most_at_once.remote(), timeout=HANG)
    assert most["io"] == 2 and most["compute"] == 1


def test_options_put_a_call_in_another_concurrency_group(ray, tmp_path):
    grouped = _grouped(ray).remote()
    d = str(tmp_path)
    pair = [grouped.default.options(concurrency_group="io").remote(d, i, 1 - i) for i in range(2)]
    assert ray.get(pair, timeout=HANG) == [True, True]


@pytest.mark.beyond  # Ray 2.60 crashes the actor's process (a failed check in its C++ core)
def test_an_unknown_concurrency_group_is_refused_at_the_call(ray):
    grouped = _grouped(ray).remote()
    with pytest.raises(ValueError, match="concurrency group 'nope'"):
        grouped.default.options(concurrency_group="nope").remote(".", 0, 1)


# --- methods ---------------------------------------------------------------------------------


def test_an_instance_attribute_named_like_a_method_never_shadows_it(ray):
    @ray.remote
    class Reporter:
        def __init__(self):
            self.reported = set()  # the same name as the method below

        def report(self, x):
            self.reported.add(x)

        def reported(self):
            return sorted(self.__dict__["reported"])

    reporter = Reporter.remote()
    ray.get([reporter.report.remote(x) for x in (3, 1, 2)], timeout=HANG)
    assert ray.get(reporter.reported.remote(), timeout=HANG) == [1, 2, 3]


def test_an_async_generator_method_runs_as_one_asyncio_task(ray):
    @ray.remote
    class Streamer:
        async def stream(self, n):
            import contextvars

            # Made here: a step run in another task would not see the value set in the first.
            var = contextvars.ContextVar("step", default=None)
            var.set("set at the start")
            for _ in range(n):
                await asyncio.sleep(0)
                yield (id(asyncio.current_task()), var.get())

    streamer = Streamer.remote()
    steps = [ray.get(r, timeout=HANG) for r in streamer.stream.remote(5)]
    assert len({task for task, _ in steps}) == 1
    assert {value for _, value in steps} == {"set at the start"}


# --- restarts --------------------------------------------------------------------------------


def _fragile(ray, **options):
    class Fragile:
        def __init__(self):
            import os

            self.pid = os.getpid()
            self.calls = 0

        def inc(self):
            self.calls += 1
            return self.calls, self.pid

        def die(self):
            import os

            os._exit(1)  # takes the whole worker process down

    return ray.remote(**options)(Fragile) if options else ray.remote(Fragile)


def _until_back(ray, actor):
    """The first call that succeeds after a restart (calls in between may be unavailable)."""

    def attempt():
        try:
            return (ray.get(actor.inc.remote(), timeout=HANG),)
        except ray.exceptions.ActorUnavailableError:
            return None

    return wait_until(attempt, "the actor is back", HANG)[0]


def test_an_actor_with_max_restarts_is_restarted_with_fresh_state_then_dies(ray):
    actor = _fragile(ray, max_restarts=1).remote()
    assert ray.get([actor.inc.remote() for _ in range(3)], timeout=HANG)[-1][0] == 3
    _, first_pid = ray.get(actor.inc.remote(), timeout=HANG)

    dying = actor.die.remote()
    with pytest.raises(ray.exceptions.RayActorError) as in_flight:
        ray.get(dying, timeout=HANG)
    assert not isinstance(in_flight.value, ray.exceptions.ActorDiedError)  # unavailable
    calls, pid = _until_back(ray, actor)
    assert calls == 1 and pid != first_pid  # the constructor ran again, in another process

    actor.die.remote()  # no restart left
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(actor.inc.remote(), timeout=HANG)


def test_a_new_actor_can_be_created_right_after_a_worker_crashed(ray):
    actor = _fragile(ray).remote()
    ray.get(actor.inc.remote(), timeout=HANG)
    actor.die.remote()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.inc.remote(), timeout=HANG)
    fresh = _fragile(ray).remote()
    assert ray.get(fresh.inc.remote(), timeout=HANG)[0] == 1


def test_with_max_task_retries_a_call_in_flight_runs_again_on_the_restarted_actor(ray, tmp_path):
    @ray.remote(max_restarts=1, max_task_retries=1)
    class Once:
        def first_time_dies(self, directory):
            import os

            marker = os.path.join(directory, "died-once")
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return "ran again"

    actor = Once.remote()
    assert ray.get(actor.first_time_dies.remote(str(tmp_path)), timeout=HANG) == "ran again"
