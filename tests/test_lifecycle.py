"""SPEC 1: init, shutdown, is_initialized, get_client and auto-init; Dask task naming.

daskgen only: these tests start and stop daskgen themselves, so each one begins and ends with
``daskgen.shutdown()``; the ``ray`` fixture of the parity tests re-initialises afterwards.
"""

from __future__ import annotations

import importlib

import pytest
from realcluster import wait_until

pytestmark = pytest.mark.daskgen_only

HANG = 60  # seconds: a generous bound that only catches hangs


@pytest.fixture
def daskgen(monkeypatch):
    # Imported here, not at module level: the Ray test environment has no daskgen or distributed.
    mod = importlib.import_module("daskgen")
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    mod.shutdown()
    yield mod
    mod.shutdown()


@pytest.fixture(scope="module")
def external_cluster():
    """A LocalCluster that the test owns, shaped like daskgen's own (one CPU per worker)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        resources={"CPU": 1},
        dashboard_address=":0",
    ) as cluster:
        yield cluster


def _scheduler_cpus(client) -> float:
    return client.run_on_scheduler(
        lambda dask_scheduler: sum(
            ws.resources.get("CPU", 0) for ws in dask_scheduler.workers.values()
        )
    )


def _cluster_is_reachable(address, timeout="10s") -> bool:
    from distributed import Client

    try:
        with Client(address, timeout=timeout):
            return True
    except (OSError, TimeoutError):
        return False


# --- embedded cluster ---------------------------------------------------------------------------


def test_init_marks_daskgen_initialized(daskgen):
    daskgen.init(num_cpus=1)
    assert daskgen.is_initialized()


def test_init_starts_an_embedded_cluster_with_num_cpus_cpus(daskgen):
    daskgen.init(num_cpus=2)
    assert _scheduler_cpus(daskgen.get_client()) == 2


def test_get_client_returns_a_distributed_client(daskgen):
    from distributed import Client

    daskgen.init(num_cpus=1)
    assert isinstance(daskgen.get_client(), Client)


def test_second_init_raises_runtime_error(daskgen):
    daskgen.init(num_cpus=1)
    with pytest.raises(RuntimeError):
        daskgen.init(num_cpus=1)


def test_second_init_with_ignore_reinit_error_keeps_the_same_client(daskgen):
    daskgen.init(num_cpus=1)
    client = daskgen.get_client()
    daskgen.init(num_cpus=1, ignore_reinit_error=True)
    assert daskgen.get_client() is client


def test_shutdown_marks_daskgen_not_initialized(daskgen):
    daskgen.init(num_cpus=1)
    daskgen.shutdown()
    assert not daskgen.is_initialized()


def test_shutdown_closes_the_embedded_cluster(daskgen):
    daskgen.init(num_cpus=1)
    address = daskgen.get_client().cluster.scheduler.address  # the TCP one workers use
    daskgen.shutdown()
    assert not _cluster_is_reachable(address, timeout="1s")


def test_the_embedded_cluster_is_tuned_and_the_tuning_stays_inside_it(daskgen):
    import gc
    import os

    import distributed.scheduler

    daskgen.init(num_cpus=1)
    client = daskgen.get_client()
    # the driver's client reaches the in-process scheduler without a socket; others use TCP
    assert client.scheduler.address.startswith("inproc://")
    assert client.cluster.scheduler.address.startswith("tcp://")
    assert client.dashboard_link.startswith("http://127.0.0.1:")
    envs = client.run(lambda: (os.environ["MALLOC_TRIM_THRESHOLD_"], os.environ["MALLOC_TOP_PAD_"]))
    assert set(envs.values()) == {(str(64 * 2**20), str(256 * 2**20))}
    assert gc.get_freeze_count() > 0
    assert hasattr(distributed.scheduler.offload, "daskgen_original")
    assert "daskgen-fast-lane" in client.cluster.scheduler.plugins
    lane = client.cluster.scheduler.plugins["daskgen-fast-lane"].path
    assert os.stat(os.path.dirname(lane)).st_mode & 0o077 == 0  # private to this user
    daskgen.shutdown()
    assert gc.get_freeze_count() == 0  # what init froze is collectable again
    assert not hasattr(distributed.scheduler.offload, "daskgen_original")
    assert not os.path.exists(os.path.dirname(lane))  # its private directory is removed


def test_the_embedded_workers_are_forked_by_their_nanny_and_init_waits_for_their_lanes(daskgen):
    daskgen.init(num_cpus=2)
    client = daskgen.get_client()
    lane = client.cluster.scheduler.plugins["daskgen-fast-lane"]
    # init() returned only once every worker had opened its lane: the first tasks use it
    assert {end.worker for end in lane.ends} == set(client.scheduler_info()["workers"])
    # forked: the worker holds what its nanny's process imported (``dask spec``'s command),
    # which a freshly spawned interpreter would not have
    forked = client.run(lambda: "distributed.cli.dask_spec" in __import__("sys").modules)
    assert set(forked.values()) == {True}


def test_a_worker_that_cannot_start_fails_init_with_a_clear_error(daskgen):
    with pytest.raises(RuntimeError, match="worker process 0 exited with code"):
        daskgen.init(num_cpus=1, worker_kwargs={"no_such_option": 1})
    assert not daskgen.is_initialized()


def test_shutdown_when_not_initialized_does_nothing(daskgen):
    daskgen.shutdown()
    assert not daskgen.is_initialized()


def test_init_after_shutdown_starts_again(daskgen):
    daskgen.init(num_cpus=1)
    daskgen.shutdown()
    daskgen.init(num_cpus=1)
    assert daskgen.get(daskgen.put(3), timeout=HANG) == 3


# --- existing clusters --------------------------------------------------------------------------


def test_an_existing_cluster_is_not_tuned(daskgen, external_cluster):
    # no shorter batching of Dask's streams nor worker tuning on a cluster daskgen did not
    # start (its workers' lane to the scheduler is daskgen's own connection: test_lane_real)
    daskgen.init(address=external_cluster.scheduler_address)
    client = daskgen.get_client()
    assert daskgen.get(daskgen.put(1), timeout=HANG) == 1
    on_scheduler = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))
    assert "daskgen-fast-batching" not in on_scheduler
    on_workers = client.run(lambda dask_worker: list(dask_worker.plugins))
    assert all("daskgen-tune" not in plugins for plugins in on_workers.values())


def test_init_with_address_connects_to_that_scheduler(daskgen, external_cluster):
    daskgen.init(address=external_cluster.scheduler_address)
    assert daskgen.get_client().scheduler.address == external_cluster.scheduler_address


def test_remote_function_runs_on_a_cluster_given_by_address(daskgen, external_cluster):
    daskgen.init(address=external_cluster.scheduler_address)

    @daskgen.remote
    def add_one(x):
        return x + 1

    assert daskgen.get(add_one.remote(1), timeout=HANG) == 2


def test_shutdown_leaves_a_cluster_given_by_address_running(daskgen, external_cluster):
    daskgen.init(address=external_cluster.scheduler_address)
    daskgen.shutdown()
    assert _cluster_is_reachable(external_cluster.scheduler_address)


def test_init_reads_the_address_from_the_daskgen_address_variable(
    daskgen, external_cluster, monkeypatch
):
    monkeypatch.setenv("DASKGEN_ADDRESS", external_cluster.scheduler_address)
    daskgen.init()
    assert daskgen.get_client().scheduler.address == external_cluster.scheduler_address


def test_shutdown_leaves_a_cluster_given_by_the_variable_running(
    daskgen, external_cluster, monkeypatch
):
    monkeypatch.setenv("DASKGEN_ADDRESS", external_cluster.scheduler_address)
    daskgen.init()
    daskgen.shutdown()
    assert _cluster_is_reachable(external_cluster.scheduler_address)


def test_init_with_client_uses_that_client(daskgen, external_cluster):
    from distributed import Client

    with Client(external_cluster) as client:
        daskgen.init(client=client)
        assert daskgen.get_client() is client
        daskgen.shutdown()


def test_remote_function_runs_through_a_given_client(daskgen, external_cluster):
    from distributed import Client

    with Client(external_cluster) as client:
        daskgen.init(client=client)

        @daskgen.remote
        def add_one(x):
            return x + 1

        assert daskgen.get(add_one.remote(1), timeout=HANG) == 2
        daskgen.shutdown()


# --- auto-init ----------------------------------------------------------------------------------


def test_remote_call_initializes_on_first_use(daskgen):
    @daskgen.remote
    def add_one(x):
        return x + 1

    ref = add_one.remote(1)
    assert daskgen.is_initialized()
    assert daskgen.get(ref, timeout=HANG) == 2


def test_put_initializes_on_first_use(daskgen):
    ref = daskgen.put(5)
    assert daskgen.is_initialized()
    assert daskgen.get(ref, timeout=HANG) == 5


def test_get_initializes_on_first_use(daskgen):
    assert daskgen.get([], timeout=HANG) == []
    assert daskgen.is_initialized()


def test_wait_initializes_on_first_use(daskgen):
    assert daskgen.wait([]) == ([], [])
    assert daskgen.is_initialized()


# --- Dask task naming ---------------------------------------------------------------------------


def _scheduler_keys(client):
    return client.run_on_scheduler(
        lambda dask_scheduler: [
            str(key[0] if isinstance(key, tuple) else key) for key in dask_scheduler.tasks
        ]
    )


def test_task_key_starts_with_the_function_name(daskgen):
    daskgen.init(num_cpus=1)

    @daskgen.remote
    def split_sentence(text):
        return text.split()

    ref = split_sentence.remote("a b")
    assert daskgen.get(ref, timeout=HANG) == ["a", "b"]
    # A lone call's result may come straight from its worker, a moment before the scheduler
    # has its task (``_client.direct``).
    wait_until(
        lambda: ref.key in _scheduler_keys(daskgen.get_client()), "the task at the scheduler", HANG
    )
    assert ref.key.startswith("split_sentence-")


def test_task_prefix_shown_by_the_dashboard_is_the_function_name(daskgen):
    daskgen.init(num_cpus=1)

    @daskgen.remote
    def split_sentence(text):
        return text.split()

    ref = split_sentence.remote("a b")
    assert daskgen.get(ref, timeout=HANG) == ["a", "b"]

    def prefixes():
        return daskgen.get_client().run_on_scheduler(
            lambda dask_scheduler: {ts.prefix.name for ts in dask_scheduler.tasks.values()}
        )

    wait_until(lambda: "split_sentence" in prefixes(), "the function's name as a prefix", HANG)


def test_a_driver_ended_by_sigterm_leaves_no_worker_behind(tmp_path):
    """The embedded cluster's processes end with their driver, within seconds, even when it
    is killed by SIGTERM without running its exit hooks."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "driver.py"
    script.write_text(
        "import os, sys, time\n"
        "import daskgen as ray\n"
        "ray.init(num_cpus=2)\n"
        "pids = ray.get_client().run(os.getpid)\n"
        "print(' '.join(map(str, pids.values())), flush=True)\n"
        "time.sleep(600)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert driver.stdout is not None
        workers = [int(pid) for pid in driver.stdout.readline().split()]
        assert len(workers) == 2
        spawned = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=HANG)
        deadline = time.monotonic() + 10  # generous: they go within ~1-2 s here
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in spawned):
            time.sleep(0.1)
        alive = [
            p for p in spawned if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]
        assert not alive, f"left running: {alive}"
    finally:
        if driver.poll() is None:
            driver.kill()
