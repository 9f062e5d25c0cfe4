"""Actors (SPEC 6): @remote classes, ordered methods, generator methods, kill, named actors."""

from __future__ import annotations

import asyncio
import pickle
import time

import pytest


def _counter(ray, **options):
    class Counter:
        def __init__(self, start=0):
            self.n = start

        def incr(self, k=1):
            self.n += k
            return self.n

        def value(self):
            return self.n

        def count_up(self, n):
            for i in range(n):
                yield self.n + i

        def fail(self):
            raise ValueError("actor method failed")

        def sleep(self, seconds):
            time.sleep(seconds)
            return seconds

    # Ray rejects a bare @ray.remote() with empty parentheses
    return ray.remote(**options)(Counter) if options else ray.remote(Counter)


def test_a_remote_class_returns_a_handle_whose_methods_run_on_the_actor(ray):
    counter = _counter(ray).remote(10)
    assert ray.get(counter.incr.remote(), timeout=60) == 11
    assert ray.get(counter.incr.remote(5), timeout=60) == 16


def test_remote_with_options_on_a_class_works(ray):
    counter = _counter(ray, num_cpus=0).remote()
    assert ray.get(counter.incr.remote(), timeout=60) == 1


def test_a_hundred_interleaved_calls_run_in_call_order(ray):
    counter = _counter(ray).remote()
    refs, expected = [], []
    for i in range(1, 101):
        refs.append(counter.incr.remote())
        expected.append(i)
        if i % 10 == 0:
            refs.append(counter.value.remote())
            expected.append(i)
    assert ray.get(refs, timeout=120) == expected


def test_a_call_on_a_handle_dropped_at_once_still_runs(ray):
    """``Cls.remote().method.remote()``: the handle is gone before the call reaches the actor;
    the call runs (and then the actor ends)."""
    counter = _counter(ray)
    for i in range(3):
        assert ray.get(counter.remote(i).incr.remote(), timeout=120) == i + 1


def test_a_method_result_is_a_real_ref_usable_as_a_task_argument(ray):
    counter = _counter(ray).remote(20)

    @ray.remote
    def double(x):
        return 2 * x

    assert ray.get(double.remote(counter.incr.remote()), timeout=60) == 42


def test_a_generator_method_streams_by_default(ray):
    counter = _counter(ray).remote(5)
    gen = counter.count_up.remote(3)
    assert type(gen).__name__ == "ObjectRefGenerator"
    assert [ray.get(r, timeout=60) for r in gen] == [5, 6, 7]


def test_a_generator_method_with_dynamic_num_returns_gives_a_dynamic_generator(ray):
    counter = _counter(ray).remote(1)
    dyn = ray.get(counter.count_up.options(num_returns="dynamic").remote(3), timeout=60)
    assert ray.get(list(dyn), timeout=60) == [1, 2, 3]


def test_a_generator_method_with_static_num_returns_gives_n_refs(ray):
    counter = _counter(ray).remote(1)
    refs = counter.count_up.options(num_returns=3).remote(3)
    assert ray.get(refs, timeout=60) == [1, 2, 3]


def test_a_generator_methods_ref_is_usable_as_a_task_argument(ray):
    counter = _counter(ray).remote(7)

    @ray.remote
    def plus_one(x):
        return x + 1

    first = next(counter.count_up.remote(2))
    assert ray.get(plus_one.remote(first), timeout=60) == 8


def test_method_decorator_sets_num_returns(ray):
    @ray.remote
    class Splitter:
        @ray.method(num_returns=2)
        def pair(self):
            return 1, 2

    a, b = Splitter.remote().pair.remote()
    assert ray.get([a, b], timeout=60) == [1, 2]


def test_a_failing_method_raises_the_users_exception_at_get(ray):
    counter = _counter(ray).remote()
    with pytest.raises(ValueError, match="actor method failed"):
        ray.get(counter.fail.remote(), timeout=60)
    assert ray.get(counter.incr.remote(), timeout=60) == 1  # the actor survives


def test_max_concurrency_lets_methods_overlap(ray, tmp_path):
    @ray.remote(max_concurrency=2)
    class Meeting:
        def arrive(self, path, me, other):
            import os
            import time

            open(os.path.join(path, me), "w").close()
            deadline = time.monotonic() + 30
            while not os.path.exists(os.path.join(path, other)):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
            return True

    m = Meeting.remote()
    a = m.arrive.remote(str(tmp_path), "a", "b")
    b = m.arrive.remote(str(tmp_path), "b", "a")
    assert ray.get([a, b], timeout=60) == [True, True]


def test_async_methods_run_on_the_actors_event_loop_and_overlap(ray):
    @ray.remote
    class AsyncActor:
        def __init__(self):
            self.event = None

        async def wait_for_other(self):
            if self.event is None:
                self.event = asyncio.Event()
                await asyncio.wait_for(self.event.wait(), 30)
                return "waited"
            self.event.set()
            return "released"

    actor = AsyncActor.remote()
    first = actor.wait_for_other.remote()
    second = actor.wait_for_other.remote()
    assert sorted(ray.get([first, second], timeout=60)) == ["released", "waited"]


def test_async_generator_methods_stream(ray):
    @ray.remote
    class AsyncGen:
        async def numbers(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i

    actor = AsyncGen.remote()
    assert [ray.get(r, timeout=60) for r in actor.numbers.remote(4)] == [0, 1, 2, 3]


def test_a_handle_passed_into_a_task_can_call_methods_there(ray):
    counter = _counter(ray).remote(100)

    @ray.remote
    def use(handle):
        return ray.get(handle.incr.remote())

    assert ray.get(use.remote(counter), timeout=60) == 101
    assert ray.get(counter.value.remote(), timeout=60) == 101


def test_a_handle_survives_pickling_in_the_driver(ray):
    counter = _counter(ray).remote(3)
    copy = pickle.loads(pickle.dumps(counter))
    assert ray.get(copy.incr.remote(), timeout=60) == 4


def test_calls_to_a_killed_actor_raise_actor_died_error(ray):
    counter = _counter(ray).remote()
    assert ray.get(counter.incr.remote(), timeout=60) == 1
    ray.kill(counter)
    # Ray's kill is asynchronous: a call made right after it may still run. Within a bounded
    # number of calls, one must fail with RayActorError (daskgen fails the very first).
    for _ in range(200):
        try:
            ray.get(counter.incr.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("calls to the killed actor kept succeeding")


def test_actor_died_error_is_a_ray_actor_error(ray):
    assert issubclass(ray.exceptions.ActorDiedError, ray.exceptions.RayActorError)


def test_a_named_actor_can_be_found_with_get_actor(ray):
    counter = _counter(ray).options(name="parity-named-counter").remote(50)
    found = ray.get_actor("parity-named-counter")
    assert ray.get(found.incr.remote(), timeout=60) == 51
    assert ray.get(counter.value.remote(), timeout=60) == 51
    ray.kill(counter)


def test_get_if_exists_returns_the_existing_named_actor(ray):
    first = _counter(ray).options(name="parity-get-if-exists", get_if_exists=True).remote(1)
    second = _counter(ray).options(name="parity-get-if-exists", get_if_exists=True).remote(99)
    assert ray.get(first.incr.remote(), timeout=60) == 2
    assert ray.get(second.incr.remote(), timeout=60) == 3
    ray.kill(first)


def test_get_actor_with_an_unknown_name_raises_value_error(ray):
    with pytest.raises(ValueError):
        ray.get_actor("no-such-actor-anywhere")


def test_a_handle_repr_shows_the_class_name(ray):
    counter = _counter(ray).remote()
    assert "Counter" in repr(counter)


def test_calling_a_method_directly_raises_type_error_naming_remote(ray):
    counter = _counter(ray).remote()
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        counter.incr()


def test_instantiating_an_actor_class_directly_raises_type_error(ray):
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        _counter(ray)()


def test_a_long_method_on_one_actor_does_not_block_another_actor(ray, tmp_path):
    @ray.remote(num_cpus=0)
    class Gate:
        def wait_open(self, path):
            import os
            import time

            deadline = time.monotonic() + 60
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    return "gate never opened"
                time.sleep(0.01)
            return "passed"

        def ping(self):
            return "pong"

    gate = str(tmp_path / "open")
    # More blocked actors than the cluster has CPUs, so some share a worker with `quick`.
    blocked = [Gate.remote() for _ in range(3)]
    waiting = [a.wait_open.remote(gate) for a in blocked]
    quick = Gate.remote()
    # While every other actor is stuck in a long method, this one still answers.
    assert ray.get(quick.ping.remote(), timeout=30) == "pong"
    open(gate, "w").close()
    assert ray.get(waiting, timeout=60) == ["passed"] * 3


def test_when_the_actors_worker_dies_pending_and_later_calls_raise_actor_died_error(ray):
    @ray.remote(max_restarts=0)
    class Fragile:
        def pid(self):
            import os

            return os.getpid()

        def die(self):
            import os

            os._exit(1)  # takes the whole worker process down

        def hello(self):
            return "hello"

    actor = Fragile.remote()
    assert isinstance(ray.get(actor.pid.remote(), timeout=60), int)
    actor.die.remote()
    pending = actor.hello.remote()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(pending, timeout=60)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.hello.remote(), timeout=60)
