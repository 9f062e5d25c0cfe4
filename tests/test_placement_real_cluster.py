"""Placement groups, scheduling strategies and the errors of lost workers on a real cluster: a
``dask scheduler`` and ``dask worker --nanny`` processes on 127.0.0.1, daskgen connected by
address.

* the placement checks of ``tests/test_placement.py`` (two workers);
* a bundle whose worker died is booked again (the nanny's new worker) and its tasks run there;
* a task whose worker its nanny ended for memory raises ``OutOfMemoryError``; one whose worker
  went with its nanny ``NodeDiedError``; one whose worker process alone died (the nanny
  restarts it) ``WorkerCrashedError``.
"""

from __future__ import annotations

import pytest
import realcluster
import test_placement
from parity import test_free_workers
from realcluster import HANG, wait_until

import daskgen
from daskgen._protocol import PLUGIN_NAME

pytestmark = pytest.mark.daskgen_only


@pytest.fixture
def ray(on_real_cluster):
    """daskgen connected to the module's real cluster (conftest's ``real_cluster``: 2 workers
    with nannies), both workers listed by ``nodes()``."""
    wait_until(lambda: len(daskgen.nodes()[0]["DaskWorkers"]) == 2, "both workers are listed")
    return on_real_cluster


def test_strict_strategies_place_bundles_on_distinct_or_one_worker(ray):
    test_placement.check_strict_strategies_place_bundles_on_distinct_or_one_worker(ray)


def test_spread_and_node_affinity_follow_worker_restrictions(ray):
    test_placement.check_spread_and_node_affinity_follow_worker_restrictions(ray)


def test_actors_keep_off_booked_workers_and_go_to_their_bundle(ray):
    test_placement.check_actors_keep_off_booked_workers_and_go_to_their_bundle(ray)


def test_calls_behind_a_long_call_run_on_the_free_worker(ray):
    test_free_workers.check_calls_behind_a_long_call_run_on_the_free_worker(ray)


def test_a_wait_loop_gets_short_calls_before_a_long_one(ray):
    test_free_workers.check_a_wait_loop_gets_short_calls_before_a_long_one(ray)


def test_a_plain_dask_clients_tasks_waiting_on_a_busy_worker_are_not_moved(ray, real_cluster):
    """daskgen moves only its own waiting tasks: a plain client's tasks that Dask placed behind
    its long task are never asked to move when daskgen's calls end on the other, free, worker
    (Dask's own work stealing may move them, as it would without daskgen)."""
    import socket

    from distributed import Client

    def placed(dask_scheduler, keys):
        ts = [dask_scheduler.tasks.get(k) for k in keys]
        return [t.processing_on.address if t is not None and t.processing_on else None for t in ts]

    def moved(dask_scheduler):
        return list(dask_scheduler.plugins[PLUGIN_NAME].waiting.moved)

    def work(port=None):  # defined here, so pickled by value: workers cannot import the tests
        if port is not None:  # held until the test lets it go
            with socket.create_connection(("127.0.0.1", port), timeout=HANG) as conn:
                conn.recv(1)

    with Client(real_cluster.address) as plain, socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(HANG)
        cpu = {"CPU": 1}
        plain.gather([plain.submit(work, resources=cpu, pure=False) for _ in range(8)])  # short
        blocker = plain.submit(work, server.getsockname()[1], resources=cpu, pure=False)
        shorts = [plain.submit(work, resources=cpu, pure=False) for _ in range(8)]
        conn, _ = server.accept()
        with conn:
            held = plain.run_on_scheduler(placed, keys=[blocker.key])[0]

            def other_done():  # the other worker ran its share; the rest wait behind the blocker
                where = plain.run_on_scheduler(placed, keys=[f.key for f in shorts])
                return all(w in (None, held) for w in where)

            wait_until(other_done, "the plain client's tasks on the other worker ended", HANG)
            call = test_free_workers.blocking_call(ray)
            assert len(ray.get([call.remote() for _ in range(8)], timeout=HANG)) == 8
            # daskgen's calls ended on the free worker, each time looking for tasks to move
            # there; the plain client's (Dask's own stealing may move them) are not its own
            assert not {f.key for f in shorts} & set(plain.run_on_scheduler(moved))
            conn.sendall(b"x")
        plain.gather(shorts + [blocker], errors="raise")


def test_a_bundle_whose_worker_died_is_booked_again_and_its_tasks_follow(ray, real_cluster):
    from daskgen.util import placement_group, placement_group_table, remove_placement_group
    from daskgen.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote
    def where():
        import os

        return ray.get_runtime_context().get_node_id(), os.getpid()

    group = placement_group([{"CPU": 1}])
    try:
        assert group.wait(HANG)
        in_bundle = where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0))
        first, pid = ray.get(in_bundle.remote(), timeout=HANG)
        assert placement_group_table(group)["bundles_to_node_id"] == {0: first}
        real_cluster.kill_worker_process(pid)  # its nanny starts a new worker, at a new address

        def booked_again():
            table = placement_group_table(group)
            return table["state"] == "CREATED" and table["bundles_to_node_id"][0] != first

        wait_until(booked_again, "the bundle was booked on a live worker", HANG)
        again, _ = ray.get(in_bundle.remote(), timeout=HANG)
        assert again == placement_group_table(group)["bundles_to_node_id"][0] != first
    finally:
        remove_placement_group(group)


# --- why a worker left --------------------------------------------------------------------------


def _hog():
    """A task allocating past any sane memory limit, 20 MiB at a time (the nanny ends its
    worker). Made inside a function so that it is pickled by value: the workers cannot import
    the tests."""

    def hog():
        import time

        chunks = []
        for _ in range(400):
            chunks.append(b"x" * (20 * 2**20))
            time.sleep(0.01)  # the nanny checks the worker's memory every 100 ms
        return len(chunks)

    return hog


def test_a_task_whose_worker_its_nanny_ended_for_memory_raises_out_of_memory(tmp_path, dg):
    with realcluster.start_cluster(
        tmp_path / "cluster", n_workers=1, nanny=True, memory_limit="400MB"
    ) as cluster:
        dg.init(address=cluster.address)
        hog = dg.remote(max_retries=0)(_hog())
        with pytest.raises(dg.exceptions.OutOfMemoryError) as info:
            dg.get(hog.remote(), timeout=HANG)
        message = str(info.value)
        assert message.startswith("Task was killed due to the node running low on memory.")
        assert "distributed.worker.memory.terminate" in message
        assert not isinstance(info.value, dg.exceptions.WorkerCrashedError)


def _pid_when_started():
    """A task that writes its pid to ``marker_dir/pid`` and then waits to be killed (by
    value, as :func:`_hog`)."""

    def pid_when_started(marker_dir):
        import os
        import time

        with open(os.path.join(marker_dir, "pid"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)  # killed long before

    return pid_when_started


def test_a_task_whose_worker_died_with_its_nanny_raises_node_died(tmp_path, dg):
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        dg.init(address=cluster.address)
        task = dg.remote(max_retries=0)(_pid_when_started())
        ref = task.remote(str(tmp_path))
        realcluster.read_marker(tmp_path, "pid")
        (nanny,) = cluster.worker_pids()
        cluster.kill_worker(nanny)  # the nanny and its worker: the "node" is gone
        with pytest.raises(dg.exceptions.NodeDiedError) as info:
            dg.get(ref, timeout=HANG)
        assert str(info.value).startswith("The node running the task died")


def test_a_task_whose_worker_process_died_raises_worker_crashed(tmp_path, dg):
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        dg.init(address=cluster.address)
        task = dg.remote(max_retries=0)(_pid_when_started())
        ref = task.remote(str(tmp_path))
        pid = int(realcluster.read_marker(tmp_path, "pid"))
        cluster.kill_worker_process(pid)  # its nanny lives on and restarts it
        with pytest.raises(dg.exceptions.WorkerCrashedError):
            dg.get(ref, timeout=HANG)
