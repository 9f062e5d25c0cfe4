"""The real-cluster fixture itself (``tests/realcluster.py``): nanny mode, a scheduler restarted on
the same address, workers and a scheduler from a venv without daskgen, and a teardown that leaves
no process behind.

daskgen only: these tests run plain ``distributed`` clients against ``dask`` processes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import realcluster
from realcluster import HANG, wait_until

pytestmark = pytest.mark.daskgen_only


@pytest.fixture(scope="session")
def venv_without_daskgen():
    """Built once per machine (cached under the temporary directory), checked once a session."""
    return realcluster.make_venv_without_daskgen()


def _daskgen_missing():
    """Run on a worker or the scheduler; pickled by value (defined in a function)."""

    def missing(dask_scheduler=None):
        import importlib.util

        return importlib.util.find_spec("daskgen") is None

    return missing


def _pid_and_daskgen_missing():
    def probe():
        import importlib.util
        import os

        return os.getpid(), importlib.util.find_spec("daskgen") is None

    return probe


# --- nanny mode -----------------------------------------------------------------------------------


def test_nanny_mode_runs_tasks_in_worker_children_of_the_nannies(tmp_path):
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=2, nanny=True) as cluster:
        nannies = cluster.worker_pids()
        children = cluster.worker_process_pids()
        assert len(nannies) == len(children) == 2
        assert children.isdisjoint(nannies)
        assert {os.getpgid(pid) for pid in children} == nannies
        with cluster.client() as client:
            assert client.submit(os.getpid, pure=False).result(timeout=HANG) in children
        with pytest.raises(AssertionError, match="is a nanny"):
            cluster.kill_worker_process(min(nannies))
        with pytest.raises(AssertionError, match="not a worker under the nannies"):
            cluster.kill_worker_process(os.getpid())
        assert cluster.worker_process_pids() == children


def test_a_worker_process_killed_under_a_nanny_is_restarted_by_it(tmp_path):
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        nannies = cluster.worker_pids()
        (child,) = cluster.worker_process_pids()
        cluster.kill_worker_process(child)
        assert not realcluster.pid_alive(child)
        with cluster.client() as client:
            (new,) = wait_until(
                lambda: cluster.worker_process_pids(client) - {child},
                "the nanny started a new worker process and it registered",
                HANG,
            )
            assert os.getpgid(new) in nannies
            assert cluster.worker_pids() == nannies  # the same nanny
            assert client.submit(os.getpid, pure=False).result(timeout=HANG) == new


# --- restart_scheduler ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "nanny"),
    [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
    ids=["sigkill-no-nanny", "sigterm-no-nanny", "sigterm-nanny"],  # SIGKILL-nanny: below
)
def test_restart_scheduler_serves_the_same_address_and_the_workers_register_again(
    tmp_path, sig, nanny
):
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=2, nanny=nanny) as cluster:
        address, port = cluster.address, cluster.scheduler_port
        old_scheduler, old_workers = cluster.scheduler, cluster.worker_pids()
        with cluster.client() as client:  # a connection in TIME_WAIT or broken on the restart
            assert client.submit(os.getpid, pure=False).result(timeout=HANG)

        cluster.restart_scheduler(sig)

        assert old_scheduler.poll() is not None and cluster.scheduler is not old_scheduler
        assert cluster.address == address and address.endswith(f":{port}")
        cluster.wait_for_workers(2)
        # Dask workers do not reconnect: the fixture killed them and started new ones.
        assert len(cluster.worker_pids()) == 2 and cluster.worker_pids().isdisjoint(old_workers)
        with cluster.client() as client:
            pids = cluster.worker_process_pids(client)
            assert len(pids) == 2
            assert client.submit(os.getpid, pure=False).result(timeout=HANG) in pids


def test_without_restart_workers_the_old_workers_close_themselves(tmp_path):
    # What Dask does, and why the fixture replaces the workers: none reconnects.
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=1) as cluster:
        cluster.start_worker(nanny=True)
        cluster.wait_for_workers(2)
        old = list(cluster.workers)
        cluster.restart_scheduler(restart_workers=False)
        wait_until(lambda: all(p.poll() is not None for p in old), "the old workers exited", HANG)
        assert [p.returncode for p in old] == [0, 0]  # they closed themselves, nanny included
        assert cluster.worker_pids() == set()
        with cluster.client() as client:
            assert client.scheduler_info(n_workers=-1)["workers"] == {}


def test_restart_scheduler_twice(tmp_path):
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=1) as cluster:
        address = cluster.address
        for _ in range(2):
            cluster.restart_scheduler()
            assert cluster.address == address
            cluster.wait_for_workers(1)
        assert len(cluster.workers) == 1 and cluster.workers[0].poll() is None


# --- a Python without daskgen ---------------------------------------------------------------------


def test_a_worker_from_the_venv_without_daskgen_joins_and_cannot_import_daskgen(
    tmp_path, venv_without_daskgen
):
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=1) as cluster:
        (ours,) = cluster.worker_pids()
        theirs = cluster.start_worker(venv=venv_without_daskgen).pid
        cluster.wait_for_workers(2)
        with cluster.client() as client:
            probed = dict(client.run(_pid_and_daskgen_missing()).values())
        assert probed == {ours: False, theirs: True}  # the project's venv has daskgen


def test_a_scheduler_and_nanny_workers_from_the_venv_without_daskgen(
    tmp_path, venv_without_daskgen
):
    with realcluster.start_cluster(
        tmp_path / "cluster",
        n_workers=1,
        nanny=True,
        worker_venv=venv_without_daskgen,
        scheduler_venv=venv_without_daskgen,
    ) as cluster:
        with cluster.client() as client:
            assert client.run_on_scheduler(_daskgen_missing()) is True
            assert list(client.run(_daskgen_missing()).values()) == [True]  # the nanny's child
            assert list(client.run(_daskgen_missing(), nanny=True).values()) == [True]
            assert client.submit(lambda x: x + 1, 1).result(timeout=HANG) == 2
        cluster.restart_scheduler()  # from the same venv again
        with cluster.client() as client:
            assert client.run_on_scheduler(_daskgen_missing()) is True


def test_the_venv_check_rejects_a_venv_that_has_daskgen():
    project_venv = Path(sys.prefix)  # daskgen is installed there (editable)
    with pytest.raises(RuntimeError, match="imports daskgen"):
        realcluster._verify_venv(project_venv, {})


def test_make_venv_without_daskgen_reuses_its_venv(venv_without_daskgen):
    assert realcluster.make_venv_without_daskgen() == venv_without_daskgen
    assert (venv_without_daskgen / "bin" / "dask").exists()
    assert venv_without_daskgen.name.startswith("daskgen-test-venv-")


# --- close ----------------------------------------------------------------------------------------


def test_close_leaves_none_of_the_started_processes_alive(tmp_path, venv_without_daskgen):
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        cluster.start_worker(nanny=False)
        cluster.start_worker(venv=venv_without_daskgen)  # with a nanny, the cluster's default
        cluster.wait_for_workers(3)
        cluster.restart_scheduler()  # a dead scheduler and dead workers among the groups
        cluster.wait_for_workers(3)
        children = cluster.worker_process_pids() - cluster.worker_pids()
        assert len(children) == 2
        cluster.kill_worker_process(min(children))  # a replaced worker child under a nanny
        wait_until(lambda: len(cluster.worker_process_pids()) == 3, "the nanny replaced it", HANG)
        started = cluster.group_pids()
        assert cluster.worker_pids() < started and cluster.scheduler.pid in started
        assert len(started) > 5  # the scheduler, 3 workers or nannies, 2 nannies' children
    assert not cluster.group_pids()
    assert not [pid for pid in started if realcluster.pid_alive(pid)]
    assert all(proc.poll() is not None for proc, _ in cluster._procs)
