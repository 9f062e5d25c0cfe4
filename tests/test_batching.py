"""Calls made in a row reach the scheduler together (``daskgen._client.batching``): fewer
``update-graph`` messages than calls (from the driver and from inside a task), each call with
its own options, in order, and a ref dropped at once still runs and is then freed. On the
embedded cluster and a real one.
daskgen only (how calls reach the scheduler is Dask's side)."""

from __future__ import annotations

import pytest
from realcluster import HANG, start_cluster, wait_until

pytestmark = pytest.mark.daskgen_only


def _count_graphs():
    """By value: a scheduler plugin counting update-graph messages by task prefix."""

    def install(dask_scheduler):
        from distributed.diagnostics.plugin import SchedulerPlugin

        class Count(SchedulerPlugin):
            name = "daskgen-test-graphs"

            def __init__(self):
                self.graphs = {}

            def update_graph(self, scheduler, *, keys=(), **kwargs):
                for prefix in {str(k).rpartition("-")[0] for k in keys}:
                    self.graphs[prefix] = self.graphs.get(prefix, 0) + 1

        dask_scheduler.add_plugin(Count())

    return install


def _graphs(prefix):
    def read(dask_scheduler):
        return dask_scheduler.plugins["daskgen-test-graphs"].graphs.get(prefix, 0)

    return read


def _restrictions(keys):
    def read(dask_scheduler):
        return [dask_scheduler.tasks[k].resource_restrictions for k in keys]

    return read


def _known(keys):
    def read(dask_scheduler):
        return all(k in dask_scheduler.tasks for k in keys)

    return read


def _held(prefix):
    def read(dask_scheduler):
        return sorted(str(k) for k in dask_scheduler.tasks if str(k).startswith(prefix))

    return read


def _check_bursts(api):
    client = api.get_client()
    client.run_on_scheduler(_count_graphs())
    try:

        @api.remote
        def burst_item(x):
            return x

        assert api.get([burst_item.remote(i) for i in range(300)], timeout=HANG) == list(range(300))
        assert client.run_on_scheduler(_graphs("burst_item")) < 300 / 5

        @api.remote
        def inner_item(x):
            return x

        @api.remote
        def fan_out(n):  # a burst from inside a task: its worker's client batches it too
            return api.get([inner_item.remote(i) for i in range(n)])

        assert api.get(fan_out.remote(200), timeout=HANG) == list(range(200))
        assert client.run_on_scheduler(_graphs("inner_item")) < 200 / 5

        @api.remote
        def mixed_item(x):
            return x

        refs = [
            (mixed_item.options(num_cpus=0.5) if i % 3 == 0 else mixed_item).remote(i)
            for i in range(30)
        ]
        assert api.get(refs, timeout=HANG) == list(range(30))
        wanted = [{"CPU": 0.5} if i % 3 == 0 else {"CPU": 1} for i in range(30)]
        keys = [r.key for r in refs]
        # The first call's result may come straight from its worker a moment before the
        # scheduler has its task (``_client.direct``).
        wait_until(lambda: client.run_on_scheduler(_known(keys)), "every task known", HANG)
        assert client.run_on_scheduler(_restrictions(keys)) == wanted

        @api.remote
        def dropped_item(path, i):
            with open(path, "a") as f:
                f.write(f"{i}\n")

        return dropped_item
    finally:
        client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.remove_plugin("daskgen-test-graphs")
        )


def _check_dropped(api, dropped_item, tmp_path):
    path = tmp_path / "ran.txt"
    for i in range(50):
        dropped_item.remote(str(path), i)  # the ref dropped at once
    wait_until(lambda: path.exists() and len(path.read_text().split()) == 50, "all 50 ran", HANG)
    assert sorted(map(int, path.read_text().split())) == list(range(50))
    held = _held("dropped_item")
    wait_until(lambda: not api.get_client().run_on_scheduler(held), "their keys freed", HANG)


def test_bursts_on_the_embedded_cluster(ray, tmp_path):
    _check_dropped(ray, _check_bursts(ray), tmp_path)


def test_bursts_on_a_real_cluster(dg, tmp_path):
    with start_cluster(tmp_path / "cluster", n_workers=2, nanny=True) as cluster:
        dg.init(address=cluster.address)
        _check_dropped(dg, _check_bursts(dg), tmp_path)
