"""``ray.util``: ActorPool, as_completed, map_unordered, list_named_actors and the queue, used
the way Ray's documentation uses them (a pool of workers mapping over inputs, a producer and a
consumer sharing a queue), on both backends."""

from __future__ import annotations

import importlib
import queue as std_queue
import time

import pytest

HANG = 120  # seconds: a generous bound that only catches hangs


def _queue_module(ray):
    return importlib.import_module(ray.__name__ + ".util.queue")


def _doubler(ray):
    @ray.remote
    class Doubler:
        def double(self, x, delay=0.0):
            time.sleep(delay)
            return 2 * x

    return Doubler


def test_an_actor_pool_maps_in_order_and_unordered(ray):
    Doubler = _doubler(ray)
    pool = ray.util.ActorPool([Doubler.remote(), Doubler.remote()])
    delays = [0.05, 0.0, 0.03, 0.0, 0.02, 0.0]
    work = lambda actor, i: actor.double.remote(i, delays[i])  # noqa: E731
    assert list(pool.map(work, range(6))) == [0, 2, 4, 6, 8, 10]
    assert sorted(pool.map_unordered(work, range(6))) == [0, 2, 4, 6, 8, 10]
    assert not pool.has_next() and pool.has_free()
    with pytest.raises(StopIteration, match="No more results to get"):
        pool.get_next()


def test_an_actor_pool_queues_submissions_beyond_its_actors(ray):
    Doubler = _doubler(ray)
    a, b = Doubler.remote(), Doubler.remote()
    pool = ray.util.ActorPool([a, b])
    for v in range(5):
        pool.submit(lambda actor, v: actor.double.remote(v), v)
    assert not pool.has_free() and pool.pop_idle() is None and pool.has_next()
    assert [pool.get_next(timeout=HANG) for _ in range(5)] == [0, 2, 4, 6, 8]
    idle = pool.pop_idle()
    assert idle is not None
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a if idle is b else b)
    pool.push(idle)
    assert pool.has_free()


def test_an_actor_pool_times_out_and_map_drops_older_results(ray):
    Doubler = _doubler(ray)
    pool = ray.util.ActorPool([Doubler.remote()])
    pool.submit(lambda actor, v: actor.double.remote(v, 1.0), 1)
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.05)
    assert pool.has_next()
    assert list(pool.map(lambda actor, v: actor.double.remote(v), [3, 4])) == [6, 8]
    assert not pool.has_next()


def test_as_completed_and_map_unordered(ray):
    @ray.remote
    def after(x):
        time.sleep(0.01 * x)
        return x

    refs = [after.remote(x) for x in [5, 1, 3, 0, 2]]
    assert sorted(ray.util.as_completed(refs, chunk_size=2)) == [0, 1, 2, 3, 5]
    got = list(ray.util.as_completed(refs, chunk_size=1, yield_obj_refs=True))
    assert all(isinstance(r, ray.ObjectRef) for r in got) and sorted(got, key=str) == sorted(
        refs, key=str
    )
    assert sorted(ray.util.map_unordered(after, range(7), backpressure_size=2, chunk_size=1)) == (
        list(range(7))
    )


def test_list_named_actors(ray):
    Doubler = _doubler(ray)
    named = Doubler.options(name="util-parity-named").remote()
    assert ray.get(named.double.remote(1), timeout=HANG) == 2
    assert "util-parity-named" in ray.util.list_named_actors()
    entries = ray.util.list_named_actors(all_namespaces=True)
    assert {"name", "namespace"} <= set(entries[0])
    ray.kill(named)


def test_a_bounded_queue_raises_full_and_empty(ray):
    q_mod = _queue_module(ray)
    q = q_mod.Queue(maxsize=2)
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == len(q) == 2 and not q.empty()
    with pytest.raises(q_mod.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(std_queue.Full):
        q.put_nowait(3)
    with pytest.raises(q_mod.Full):
        q.put_nowait_batch([3, 4])  # all or nothing
    assert q.get(timeout=HANG) == 1 and q.get_nowait() == 2
    with pytest.raises(q_mod.Empty):
        q.get(timeout=0.05)
    with pytest.raises(std_queue.Empty):
        q.get_nowait()
    q.put_nowait_batch([5, 6])
    with pytest.raises(q_mod.Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [5, 6] and q.empty()
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    q.shutdown()


def test_a_queue_shared_by_tasks_and_an_actor(ray):
    q_mod = _queue_module(ray)
    q = q_mod.Queue()

    @ray.remote
    def produce(q, n):
        for i in range(n):
            q.put(i)
        return n

    @ray.remote
    class Collector:
        def collect(self, q, n):
            return [q.get(timeout=HANG) for _ in range(n)]

    collector = Collector.remote()
    collected = collector.collect.remote(q, 10)  # waits in the queue's actor for items
    assert ray.get([produce.remote(q, 5), produce.remote(q, 5)], timeout=HANG) == [5, 5]
    assert sorted(ray.get(collected, timeout=HANG)) == sorted([*range(5), *range(5)])
    assert q.empty()
    q.shutdown()


def test_a_taken_actor_name_raises_actor_already_exists(ray):
    Doubler = _doubler(ray)
    first = Doubler.options(name="util-parity-taken").remote()
    assert ray.get(first.double.remote(2), timeout=HANG) == 4
    with pytest.raises(ray.exceptions.ActorAlreadyExistsError, match="is already taken") as info:
        Doubler.options(name="util-parity-taken").remote()
    assert isinstance(info.value, ValueError) and isinstance(info.value, ray.exceptions.RayError)
    same = Doubler.options(name="util-parity-taken", get_if_exists=True).remote()
    assert ray.get(same.double.remote(3), timeout=HANG) == 6
    ray.kill(first)


@pytest.mark.parametrize(
    "name, bases",
    [
        ("OutOfMemoryError", ("RayError",)),
        ("ObjectStoreFullError", ("RayError",)),
        ("NodeDiedError", ("RayError",)),
        ("OwnerDiedError", ("ObjectLostError",)),
        ("ObjectFetchTimedOutError", ("ObjectLostError",)),
        ("ObjectReconstructionFailedError", ("ObjectLostError",)),
        ("ObjectFreedError", ("ObjectLostError",)),
        ("TaskUnschedulableError", ("RayError",)),
        ("ActorUnschedulableError", ("RayError",)),
        ("ActorAlreadyExistsError", ("ValueError", "RayError")),
        ("RuntimeEnvSetupError", ("RayError",)),
        ("OutOfDiskError", ("RayError",)),
        ("RayChannelError", ("RaySystemError",)),
    ],
)
def test_rays_exception_names_exist_with_rays_bases(ray, name, bases):
    cls = getattr(ray.exceptions, name)
    for base in bases:
        base_cls = ValueError if base == "ValueError" else getattr(ray.exceptions, base)
        assert issubclass(cls, base_cls)
