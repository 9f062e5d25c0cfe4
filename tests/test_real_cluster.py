"""SPEC 1 on a real cluster: ``init(address=...)`` and ``DASKGEN_ADDRESS`` run tasks and
generators on a running ``dask scheduler`` with ``dask worker`` processes, and ``shutdown()``
leaves that cluster running.

daskgen only. Each test starts and ends with ``daskgen.shutdown()``: the session's ``ray`` fixture
may have initialised daskgen on its embedded cluster, and re-initialises it afterwards.
"""

from __future__ import annotations

import os

import pytest
import realcluster
from realcluster import HANG, wait_until

import daskgen

pytestmark = [
    pytest.mark.daskgen_only,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # num_returns="dynamic"
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One scheduler and two single-threaded workers, shared by this module (nothing kills them)."""
    with realcluster.start_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def _pid_task():
    @daskgen.remote
    def pid():
        import os

        return os.getpid()

    return pid


def _pid_generator():
    @daskgen.remote
    def pids(n):
        import os

        for i in range(n):
            yield (i, os.getpid())

    return pids


def _values(mode, gen_fn, n):
    if mode == "streaming":
        return [daskgen.get(ref, timeout=HANG) for ref in gen_fn.remote(n)]
    if mode == "dynamic":
        refs = daskgen.get(gen_fn.options(num_returns="dynamic").remote(n), timeout=HANG)
        return daskgen.get(list(refs), timeout=HANG)
    return daskgen.get(gen_fn.options(num_returns=n).remote(n), timeout=HANG)


def _is_running(cluster) -> bool:
    procs = [cluster.scheduler, *cluster.workers]
    if any(p.poll() is not None for p in procs):
        return False
    with cluster.client() as client:
        return len(client.scheduler_info(n_workers=-1)["workers"]) == 2


# --- init(address=...) ----------------------------------------------------------------------------


def test_init_with_address_connects_to_the_running_scheduler(dg, cluster):
    dg.init(address=cluster.address)
    assert dg.get_client().scheduler.address == cluster.address


def test_a_task_runs_in_a_worker_process_of_the_cluster_given_by_address(dg, cluster):
    dg.init(address=cluster.address)
    assert dg.get(_pid_task().remote(), timeout=HANG) in cluster.worker_pids()


@pytest.mark.parametrize("mode", ["streaming", "dynamic", "static"])
def test_a_generator_runs_in_a_worker_process_of_the_cluster_given_by_address(dg, cluster, mode):
    dg.init(address=cluster.address)
    values = _values(mode, _pid_generator(), 5)
    assert [i for i, _ in values] == [0, 1, 2, 3, 4]
    assert {pid for _, pid in values} <= cluster.worker_pids()


def test_the_address_can_be_given_positionally(dg, cluster):
    dg.init(cluster.address)
    assert dg.get(_pid_task().remote(), timeout=HANG) in cluster.worker_pids()


def test_shutdown_leaves_the_scheduler_and_workers_given_by_address_running(dg, cluster):
    dg.init(address=cluster.address)
    assert dg.get(_pid_task().remote(), timeout=HANG) in cluster.worker_pids()
    dg.shutdown()
    assert _is_running(cluster)


def test_init_with_address_after_shutdown_connects_again(dg, cluster):
    dg.init(address=cluster.address)
    dg.shutdown()
    dg.init(address=cluster.address)
    assert dg.get(_pid_task().remote(), timeout=HANG) in cluster.worker_pids()


# --- DASKGEN_ADDRESS ----------------------------------------------------------------------------


def test_init_reads_the_address_from_daskgen_address(dg, cluster, monkeypatch):
    monkeypatch.setenv("DASKGEN_ADDRESS", cluster.address)
    dg.init()
    assert dg.get_client().scheduler.address == cluster.address


def test_a_first_remote_call_connects_to_daskgen_address(dg, cluster, monkeypatch):
    monkeypatch.setenv("DASKGEN_ADDRESS", cluster.address)
    ref = _pid_task().remote()  # auto-init, as in Ray
    assert dg.get_client().scheduler.address == cluster.address
    assert dg.get(ref, timeout=HANG) in cluster.worker_pids()


@pytest.mark.parametrize("mode", ["streaming", "dynamic", "static"])
def test_a_generator_runs_on_the_cluster_given_by_daskgen_address(dg, cluster, monkeypatch, mode):
    monkeypatch.setenv("DASKGEN_ADDRESS", cluster.address)
    dg.init()
    values = _values(mode, _pid_generator(), 5)
    assert [i for i, _ in values] == [0, 1, 2, 3, 4]
    assert {pid for _, pid in values} <= cluster.worker_pids()


def test_shutdown_leaves_the_cluster_given_by_daskgen_address_running(dg, cluster, monkeypatch):
    monkeypatch.setenv("DASKGEN_ADDRESS", cluster.address)
    dg.init()
    assert dg.get(_pid_task().remote(), timeout=HANG) in cluster.worker_pids()
    dg.shutdown()
    assert _is_running(cluster)


def test_an_explicit_address_wins_over_daskgen_address(dg, cluster, monkeypatch):
    monkeypatch.setenv("DASKGEN_ADDRESS", "tcp://127.0.0.1:1")  # nothing listens there
    dg.init(address=cluster.address)
    assert dg.get(_pid_task().remote(), timeout=HANG) in cluster.worker_pids()


# --- what daskgen leaves behind -------------------------------------------------------------------


def test_refs_dropped_on_a_cluster_given_by_address_leave_no_task_on_its_scheduler(dg, cluster):
    import gc

    with cluster.client() as observer:
        baseline = cluster.task_count(observer)
        dg.init(address=cluster.address)
        gen = _pid_generator().remote(10)
        refs = list(gen)
        assert len(dg.get(refs, timeout=HANG)) == 10
        task = _pid_task().remote()
        assert dg.get(task, timeout=HANG) in cluster.worker_pids()
        del gen, refs, task
        gc.collect()
        realcluster.wait_until(
            lambda: cluster.task_count(observer) <= baseline,
            f"the scheduler's task count returned to {baseline}",
        )


def test_shutdown_releases_every_key_the_driver_held_on_a_cluster_given_by_address(dg, cluster):
    with cluster.client() as observer:
        baseline = cluster.task_count(observer)
        dg.init(address=cluster.address)
        refs = list(_pid_generator().remote(10))  # still held when daskgen shuts down
        assert len(dg.get(refs, timeout=HANG)) == 10
        dg.shutdown()
        realcluster.wait_until(
            lambda: cluster.task_count(observer) <= baseline,
            f"the scheduler's task count returned to {baseline}",
        )
        del refs


def test_large_arguments_by_value_reach_tasks_on_the_cluster_whole(dg, cluster):
    """Arguments of 64 KiB and more travel as a frame of their own (``_protocol.Packed``):
    the tasks get them whole, as they were at the call, and the scheduler keeps none of them
    once the tasks are done."""
    import numpy as np

    dg.init(address=cluster.address)

    @dg.remote
    def summary(a, label, *, items):
        return int(a[0]), int(a[-1]), a.shape, label, len(items)

    a = np.arange(2**20)  # 8 MiB
    refs = [summary.remote(a, f"call-{i}", items=list(range(50_000))) for i in range(10)]
    a[0] = -1  # after the calls: each task has the value as it was
    assert dg.get(refs, timeout=HANG) == [
        (0, 2**20 - 1, (2**20,), f"call-{i}", 50_000) for i in range(10)
    ]
    del refs
    client = dg.get_client()
    wait_until(
        lambda: (
            not client.run_on_scheduler(
                lambda dask_scheduler: [k for k in dask_scheduler.tasks if "summary" in str(k)]
            )
        ),
        "the tasks forgotten",
        HANG,
    )


def test_the_worker_processes_are_the_ones_the_test_started(cluster):
    # Guards the other tests: os.getpid() in a task is a pid the fixture can kill.
    with cluster.client() as client:
        assert set(client.run(os.getpid).values()) == cluster.worker_pids()
