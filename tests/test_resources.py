"""num_cpus / num_gpus / resources become Dask worker resource restrictions."""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster

import daskgen

pytestmark = pytest.mark.daskgen_only


@pytest.fixture(scope="module")
def with_resources():
    """An embedded cluster declaring a GPU and a custom resource (on its first worker)."""
    daskgen.shutdown()
    daskgen.init(num_cpus=2, num_gpus=1, resources={"accel": 2})
    yield daskgen
    daskgen.shutdown()


def _restrictions(ref):
    key = ref.key
    return daskgen.get_client().run_on_scheduler(
        lambda dask_scheduler: dict(dask_scheduler.tasks[key].resource_restrictions or {})
    )


def _slow_identity(x):
    import time

    time.sleep(0.2)
    return x


def test_the_embedded_cluster_declares_cpu_per_worker_and_extra_resources_once(with_resources):
    info = daskgen.get_client().scheduler_info(n_workers=-1)["workers"].values()
    resources = sorted((w["resources"] for w in info), key=len)
    assert resources == [{"CPU": 1}, {"CPU": 1, "GPU": 1, "accel": 2}]


def test_num_cpus_num_gpus_and_resources_map_to_dask_resources(with_resources):
    f = daskgen.remote(num_cpus=1, num_gpus=1, resources={"accel": 2})(_slow_identity)
    ref = f.remote(7)
    assert daskgen.get(ref, timeout=60) == 7  # first, so the scheduler surely has the task
    assert _restrictions(ref) == {"CPU": 1, "GPU": 1, "accel": 2}


def test_default_task_asks_for_one_cpu(with_resources):
    ref = daskgen.remote(_slow_identity).remote(1)
    assert daskgen.get(ref, timeout=60) == 1
    assert _restrictions(ref) == {"CPU": 1}


def test_num_cpus_zero_asks_for_nothing(with_resources):
    ref = daskgen.remote(num_cpus=0)(_slow_identity).remote(2)
    assert daskgen.get(ref, timeout=60) == 2
    assert _restrictions(ref) == {}


def test_a_resource_no_worker_has_warns_at_remote_instead_of_waiting_silently(with_resources):
    f = daskgen.remote(resources={"quantum": 1})(_slow_identity)
    with pytest.warns(UserWarning, match="quantum"):
        ref = f.remote(3)
    # the task waits visibly (Dask's "no-worker" state) and the cluster keeps working
    with pytest.raises(daskgen.exceptions.GetTimeoutError):
        daskgen.get(ref, timeout=0.5)
    assert daskgen.get(daskgen.remote(_slow_identity).remote(4), timeout=60) == 4
    daskgen.cancel(ref)


def test_more_cpus_than_any_single_worker_has_warns_even_if_the_total_suffices(with_resources):
    # two workers with one CPU each: a task needing 2 CPUs fits on neither
    with pytest.warns(UserWarning, match="CPU"):
        ref = daskgen.remote(num_cpus=2)(_slow_identity).remote(8)
    daskgen.cancel(ref)


def test_more_gpus_than_the_cluster_has_warns(with_resources):
    with pytest.warns(UserWarning, match="GPU"):
        ref = daskgen.remote(num_gpus=4)(_slow_identity).remote(5)
    daskgen.cancel(ref)


def test_a_plain_dask_cluster_without_cpu_resources_runs_tasks_unrestricted():
    daskgen.shutdown()
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        daskgen.init(client=client)
        try:
            ref = daskgen.remote(_slow_identity).remote(6)
            assert daskgen.get(ref, timeout=60) == 6
            assert _restrictions(ref) == {}
        finally:
            daskgen.shutdown()
