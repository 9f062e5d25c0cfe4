"""daskgen on a user's existing Dask cluster: a ``dask scheduler`` and ``dask worker`` processes
on 127.0.0.1 (``tests/realcluster.py``), started and stopped by each test.

What a user's cluster does to daskgen, and what daskgen must not do to it:

- the scheduler restarted on the same address (with and without nannies): calls in flight fail
  with a ``RaySystemError``-family error, new calls work once it is back, no worker dies of a
  daskgen message the new scheduler cannot handle;
- workers, or the scheduler, without daskgen (a venv with the same Dask and no daskgen), or with
  another daskgen version: ``init`` refuses naming them and the fix; a worker that joins later
  gets none of daskgen's tasks and still serves everyone else's; when only such workers are
  left, calls fail at once naming them;
- the scheduler lost: every new call fails at once, ``shutdown()`` prints nothing;
- a shared cluster after daskgen's driver left: no plugin on any worker, a worker without
  daskgen joins and works, another client sees nothing of daskgen.

Functions given to ``Client.run`` / ``submit`` from a plain client are made inside functions so
that they are pickled by value: the venv's workers cannot import this module.
"""

from __future__ import annotations

import time

import pytest
import realcluster
from realcluster import HANG, start_cluster, wait_until

pytestmark = pytest.mark.daskgen_only

FIX = "pip install daskgen=="


@pytest.fixture(scope="session")
def venv():
    """A Python with this machine's Dask and no daskgen (built once, cached)."""
    return realcluster.make_venv_without_daskgen()


def _plugins():
    """By value: (scheduler plugin names, scheduler's worker-plugin names) on the scheduler."""

    def on_scheduler(dask_scheduler):
        return sorted(dask_scheduler.plugins), sorted(dask_scheduler.worker_plugins)

    return on_scheduler


def _worker_plugins():
    def on_worker(dask_worker):
        return sorted(dask_worker.plugins)

    return on_worker


def _plus_one():
    def plus_one(x):
        return x + 1

    return plus_one


def _remote_fns(ray):
    @ray.remote
    def f(i):
        return i

    @ray.remote
    def gen(n, pause):
        import time

        for i in range(n):
            time.sleep(pause)
            yield i

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    return f, gen, Counter


def _until_reconnected(ray, call):
    """``call()`` once daskgen has its connection back: while Dask reconnects, calls fail at
    once with RaySystemError (bounded retry)."""

    def attempt():
        try:
            return (call(),)
        except ray.exceptions.RaySystemError:
            return None

    return wait_until(attempt, "daskgen's calls work again", HANG)[0]


def _address_of(client, pid: int) -> str:
    """The address of the worker whose process (without a nanny) is ``pid``."""
    import os

    (address,) = [a for a, p in client.run(os.getpid).items() if p == pid]
    return address


def _no_daskgen_trouble(cluster) -> None:
    logs = cluster.logs(tail=2000)
    for bad in ("KeyError", "Failed to deserialize", "ModuleNotFoundError"):
        assert bad not in logs, f"{bad!r} in the cluster's logs:\n{logs}"


# ------------------------------------------------------------------------ scheduler restarted


@pytest.mark.parametrize("nanny", [False, True], ids=["no-nanny", "nanny"])
def test_a_scheduler_restarted_on_the_same_address_fails_calls_in_flight_then_serves_new_ones(
    dg, tmp_path, nanny
):
    with start_cluster(tmp_path / "cluster", nanny=nanny) as cluster:
        dg.init(address=cluster.address)
        f, gen, Counter = _remote_fns(dg)
        assert dg.get([f.remote(i) for i in range(3)], timeout=HANG) == [0, 1, 2]
        stream = gen.remote(10_000, 0.01)
        assert dg.get(next(stream), timeout=HANG) == 0
        old_counter = Counter.remote()
        assert dg.get(old_counter.inc.remote(), timeout=HANG) == 1

        cluster.restart_scheduler()
        t0 = time.monotonic()
        # The loop in flight ends, with an error of Ray's system family, not a hang or a
        # timeout (its task died with the old scheduler's workers).
        with pytest.raises(dg.exceptions.RaySystemError, match="connection to the Dask scheduler"):
            for ref in stream:
                dg.get(ref, timeout=HANG)
        assert time.monotonic() - t0 < HANG

        cluster.wait_for_workers(2)
        # daskgen's scheduler side is back with the client's reconnection: tasks, generators,
        # actors and put all work, with daskgen's messages from the new workers handled.
        assert _until_reconnected(dg, lambda: dg.get(f.remote(7), timeout=HANG)) == 7
        assert [dg.get(r, timeout=HANG) for r in gen.remote(5, 0)] == [0, 1, 2, 3, 4]
        counter = Counter.remote()
        assert dg.get([counter.inc.remote() for _ in range(5)], timeout=HANG) == [1, 2, 3, 4, 5]
        assert dg.get(f.remote(dg.put(41)), timeout=HANG) == 41
        # An actor lived in a worker process that went with the old scheduler.
        with pytest.raises(dg.exceptions.RayActorError):
            dg.get(old_counter.inc.remote(), timeout=HANG)
        with cluster.client(set_as_default=False) as plain:
            assert "daskgen" in plain.run_on_scheduler(_plugins())[0]
        assert all(p.poll() is None for p in cluster.workers), cluster.logs()
        _no_daskgen_trouble(cluster)


# ------------------------------------------------------------------ workers without daskgen


def test_init_refuses_a_cluster_with_a_worker_without_daskgen_naming_it(dg, tmp_path, venv):
    with start_cluster(tmp_path / "cluster", n_workers=1) as cluster:
        cluster.start_worker(venv=venv)
        cluster.wait_for_workers(2)
        with cluster.client(set_as_default=False) as plain:
            lacking = _address_of(plain, cluster.workers[1].pid)
            with pytest.raises(RuntimeError, match="daskgen must be installed") as refused:
                dg.init(address=cluster.address)
            message = str(refused.value)
            assert f"the worker {lacking}: daskgen is not installed" in message
            assert FIX in message and "the scheduler" not in message.split("missing")[1]
            assert not dg.is_initialized()
            # Nothing was installed on the cluster by the refused init.
            assert not any(
                "daskgen" in name for name in sum(plain.run_on_scheduler(_plugins()), [])
            )
            assert all(p.poll() is None for p in cluster.workers)


def test_a_worker_without_daskgen_joining_later_gets_no_daskgen_task_and_still_serves_others(
    dg, tmp_path, venv
):
    with start_cluster(tmp_path / "cluster", n_workers=1) as cluster:
        dg.init(address=cluster.address)
        f, gen, Counter = _remote_fns(dg)
        bad = cluster.start_worker(venv=venv)
        cluster.wait_for_workers(2)
        client = dg.get_client()
        bad_address = _address_of(client, bad.pid)

        @dg.remote
        def where():
            import os

            return os.getpid()

        pids = set(dg.get([where.remote() for _ in range(40)], timeout=HANG))
        assert pids == {cluster.workers[0].pid}
        assert [dg.get(r, timeout=HANG) for r in gen.remote(20, 0)] == list(range(20))
        counters = [Counter.remote() for _ in range(4)]
        assert dg.get([c.inc.remote() for c in counters], timeout=HANG) == [1, 1, 1, 1]

        # It stays in the cluster and runs a plain client's tasks.
        assert bad.poll() is None
        with cluster.client(set_as_default=False) as plain:
            done = plain.submit(_plus_one(), 1, workers=[bad_address], pure=False)
            assert done.result(timeout=HANG) == 2
        scheduler_log = (cluster.directory / "scheduler.log").read_text()
        assert f"daskgen: worker {bad_address} has no daskgen" in scheduler_log
        assert FIX in scheduler_log


def test_only_workers_without_daskgen_left_fail_calls_at_once_naming_them(dg, tmp_path, venv):
    with start_cluster(tmp_path / "cluster", n_workers=1) as cluster:
        dg.init(address=cluster.address)
        f, gen, Counter = _remote_fns(dg)
        assert dg.get(f.remote(1), timeout=HANG) == 1
        stream = gen.remote(10_000, 0.01)
        assert dg.get(next(stream), timeout=HANG) == 0
        bad = cluster.start_worker(venv=venv)
        cluster.wait_for_workers(2)
        client = dg.get_client()
        bad_address = _address_of(client, bad.pid)
        cluster.kill_worker(cluster.workers[0].pid)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, "the good worker left")

        t0 = time.monotonic()
        with pytest.raises(dg.exceptions.WorkerCrashedError) as crashed:
            dg.get(f.remote(2), timeout=HANG)
        assert time.monotonic() - t0 < HANG / 2
        assert f"{bad_address} has no daskgen" in str(crashed.value)
        assert FIX in str(crashed.value)
        # The streaming generator whose worker died does not wait for ever either.
        with pytest.raises(dg.exceptions.RayError):
            for ref in stream:
                dg.get(ref, timeout=HANG)
        with pytest.raises(dg.exceptions.RaySystemError, match="can host an actor") as no_host:
            Counter.remote()
        assert f"{bad_address} has no daskgen" in str(no_host.value)
        assert bad.poll() is None


def test_init_refuses_a_scheduler_without_daskgen(dg, tmp_path, venv):
    with start_cluster(tmp_path / "cluster", n_workers=1, scheduler_venv=venv) as cluster:
        with pytest.raises(RuntimeError, match="daskgen must be installed") as refused:
            dg.init(address=cluster.address)
        message = str(refused.value)
        assert f"the scheduler at {cluster.address}: daskgen is not installed" in message
        assert FIX in message and "ModuleNotFoundError" not in message
        assert not dg.is_initialized()


def test_another_daskgen_version_is_refused_at_init_and_kept_off_when_it_joins(dg, tmp_path):
    other = realcluster.make_other_daskgen(tmp_path / "other", "0.0.1")
    with start_cluster(tmp_path / "cluster", n_workers=1) as cluster:
        skewed = cluster.start_worker(env=other)
        cluster.wait_for_workers(2)
        with pytest.raises(RuntimeError, match="daskgen 0.0.1 is installed") as refused:
            dg.init(address=cluster.address)
        assert FIX in str(refused.value)
        assert "deserializ" not in str(refused.value).lower()

        cluster.kill_worker(skewed.pid)
        cluster.wait_for_workers(1)
        dg.init(address=cluster.address)
        f, _, _ = _remote_fns(dg)
        joined = cluster.start_worker(env=other)
        cluster.wait_for_workers(2)

        @dg.remote
        def where():
            import os

            return os.getpid()

        assert set(dg.get([where.remote() for _ in range(20)], timeout=HANG)) == {
            cluster.workers[0].pid
        }
        assert joined.poll() is None
        scheduler_log = (cluster.directory / "scheduler.log").read_text()
        assert "has daskgen '0.0.1'" in scheduler_log
        _no_daskgen_trouble(cluster)


# ------------------------------------------------------------------------- scheduler lost


def test_after_the_scheduler_is_lost_new_calls_fail_at_once_and_shutdown_is_quiet(
    dg, tmp_path, capfd
):
    with start_cluster(tmp_path / "cluster", nanny=True) as cluster:
        dg.init(address=cluster.address)
        f, _, Counter = _remote_fns(dg)
        assert dg.get(f.remote(1), timeout=HANG) == 1
        client = dg.get_client()
        cluster.kill_scheduler()
        wait_until(lambda: client.status != "running", "the client noticed the scheduler left")
        calls = {
            "a task": lambda: f.remote(2),
            "put": lambda: dg.put(3),
            "an actor": lambda: Counter.remote(),
        }
        for what, call in calls.items():
            t0 = time.monotonic()
            with pytest.raises(dg.exceptions.RaySystemError, match="Dask scheduler"):
                call()
            # Dask's own reconnect window is 30 s: daskgen does not wait it out.
            assert time.monotonic() - t0 < 5, what
        capfd.readouterr()
        dg.shutdown()
        out, err = capfd.readouterr()
        assert "Traceback" not in out + err
        assert err.strip() == "", err


# ------------------------------------------------------------- a shared cluster, left clean


def test_a_shared_cluster_after_the_driver_left_takes_workers_without_daskgen(dg, tmp_path, venv):
    with start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        with cluster.client(set_as_default=False) as plain:
            before_workers = plain.run(_worker_plugins())
            before_scheduler = plain.run_on_scheduler(_plugins())
            dg.init(address=cluster.address)
            f, gen, Counter = _remote_fns(dg)
            # The other client's work is untouched while daskgen runs.
            assert plain.submit(_plus_one(), 1).result(timeout=HANG) == 2
            assert dg.get(f.remote(1), timeout=HANG) == 1
            assert [dg.get(r, timeout=HANG) for r in gen.remote(3, 0)] == [0, 1, 2]
            assert dg.get(Counter.remote().inc.remote(), timeout=HANG) == 1
            assert plain.run(_worker_plugins()) == before_workers
            dg.shutdown()

            # No worker plugin anywhere: a worker without daskgen starts as it would anyway.
            assert plain.run_on_scheduler(_plugins())[1] == before_scheduler[1]  # Dask's own
            bad = cluster.start_worker(venv=venv)
            cluster.wait_for_workers(2)
            info = plain.scheduler_info()["workers"]
            assert all(w["status"] == "running" for w in info.values()), info
            (bad_address,) = [a for a in info if a not in before_workers]
            done = plain.submit(_plus_one(), 2, workers=[bad_address], pure=False)
            assert done.result(timeout=HANG) == 3
            assert (
                plain.run(_worker_plugins())[bad_address]
                == before_workers[next(iter(before_workers))]
            )
            assert bad.poll() is None
        _no_daskgen_trouble(cluster)


def test_only_daskgens_own_streams_batch_at_its_interval(dg, tmp_path):
    """daskgen shortens the batching of its driver's client and of the scheduler's stream to
    that client; a plain client of the same cluster, and the workers' streams, keep Dask's."""
    from daskgen import _dask_internals as dx
    from daskgen._protocol import DASKGEN_STREAM_INTERVAL_S

    def intervals(dask_scheduler, plain):
        streams = dx.scheduler_batched_streams(dask_scheduler)
        return {
            "plain": dx.scheduler_stream_to(dask_scheduler, plain).interval,
            "workers": {streams[w].interval for w in dask_scheduler.workers},
            "clients": {
                c: dx.scheduler_stream_to(dask_scheduler, c).interval
                for c in dask_scheduler.clients
                if c != "fire-and-forget"
            },
        }

    with start_cluster(tmp_path / "cluster") as cluster:
        with cluster.client(set_as_default=False) as plain:
            dg.init(address=cluster.address)
            assert dg.get(_plus_one_remote(dg).remote(1), timeout=HANG) == 2
            ours = dg.get_client()
            assert dx.client_batched_comm(ours).interval == DASKGEN_STREAM_INTERVAL_S
            assert dx.client_batched_comm(plain).interval == 0.01  # Dask's own
            seen = plain.run_on_scheduler(intervals, plain=plain.id)
            assert seen["plain"] == 0.002 and seen["workers"] == {0.005}
            assert seen["clients"][ours.id] == DASKGEN_STREAM_INTERVAL_S
            assert plain.submit(_plus_one(), 1, pure=False).result(timeout=HANG) == 2


def test_a_plain_client_sees_its_tasks_run_while_daskgens_calls_go_straight_to_workers(
    dg, tmp_path
):
    """daskgen's direct calls (a lone call run at once on a leased worker, its Dask task
    restricted there) and early yields, interleaved with a plain client's tasks on the same
    cluster: the plain client's tasks all run, where Dask puts them, with Dask's own streams,
    and the workers' thread counts are Dask's again after."""
    from daskgen import _dask_internals as dx

    with start_cluster(tmp_path / "cluster") as cluster:
        with cluster.client(set_as_default=False) as plain:
            dg.init(address=cluster.address)
            plus_one = _plus_one_remote(dg)

            @dg.remote
            def numbers(n):
                yield from range(n)

            futures = []
            for i in range(100):
                futures.append(plain.submit(_plus_one(), i, pure=False))
                assert dg.get(plus_one.remote(i), timeout=HANG) == i + 1
            assert [dg.get(r, timeout=HANG) for r in numbers.remote(50)] == list(range(50))
            assert plain.gather(futures) == list(range(1, 101))
            assert dx.client_batched_comm(plain).interval == 0.01  # Dask's own
            threads = plain.run(lambda dask_worker: dask_worker.state.nthreads)
            realcluster.wait_until(
                lambda: (
                    set(plain.run(lambda dask_worker: dask_worker.state.nthreads).values()) == {1}
                ),
                f"every worker counts its one thread again ({threads})",
                HANG,
            )
            assert plain.submit(_plus_one(), 1, pure=False).result(timeout=HANG) == 2


def _plus_one_remote(dg):
    @dg.remote
    def plus_one(x):
        return x + 1

    return plus_one


def test_a_plain_client_never_gets_daskgens_messages(dg, tmp_path):
    from daskgen import _dask_internals as dx
    from daskgen._client import actors
    from daskgen._protocol import ACTOR_DIED_OP

    with start_cluster(tmp_path / "cluster") as cluster:
        with cluster.client(set_as_default=False) as plain:
            got: list = []
            dx.client_add_stream_handler(plain, ACTOR_DIED_OP, lambda **msg: got.append(msg))
            dg.init(address=cluster.address)

            @dg.remote
            class Where:
                def pid(self):
                    import os

                    return os.getpid()

            actor = Where.remote()
            cluster.kill_worker(dg.get(actor.pid.remote(), timeout=HANG))
            # daskgen's driver hears that the actor died (the scheduler tells its clients) ...
            wait_until(lambda: actor._actor_id in actors._dead, "the driver heard", HANG)
            # ... and a report on the plain client's stream, sent after that, finds nothing
            # of daskgen's before it.
            assert plain.submit(_plus_one(), 1, pure=False).result(timeout=HANG) == 2
            assert got == []


def test_tasks_starting_together_on_fresh_workers_all_make_calls(dg, tmp_path):
    """Each task calls an actor from inside, the first daskgen calls made on these workers:
    one thread starts the worker's Dask client while others already ask for it (Dask hands
    them the client still connecting). That first connection is waited for, not taken for a
    lost scheduler (an example failed once so: 'lost its connection ... trying to
    reconnect'). The race is not forced: this catches it when the threads meet."""
    with start_cluster(tmp_path / "cluster", n_workers=2) as cluster:
        dg.init(address=cluster.address)

        @dg.remote
        class Tally:
            def __init__(self):
                self.n = 0

            def add(self, k):
                self.n += k
                return self.n

        tally = Tally.remote()

        @dg.remote
        def report(tally, k):
            return dg.get(tally.add.remote(k), timeout=HANG)

        refs = [report.remote(tally, 1) for _ in range(8)]
        assert sorted(dg.get(refs, timeout=HANG)) == list(range(1, 9))
