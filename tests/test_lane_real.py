"""The workers' lane to the scheduler on a cluster daskgen connects to (``_cluster.fastlane``:
daskgen's own TCP port on the scheduler's host, or an abstract Unix socket there): workers
open it once daskgen first sends from them, later producers and results take it, a lane that
closes costs nothing but the way back to Dask's stream, and a TLS scheduler offers none.
daskgen only (which connection carries daskgen's messages is Dask's side)."""

from __future__ import annotations

import pytest
from realcluster import HANG, start_cluster, wait_until

pytestmark = pytest.mark.daskgen_only


def _ends():
    """By value: the lane connections the scheduler has, worker -> messages handled."""

    def read(dask_scheduler):
        lane = dask_scheduler.plugins.get("daskgen-fast-lane")
        if lane is None:
            return None
        return {end.worker: end.handled for end in lane.ends if end.worker is not None}

    return read


def _close_ends():
    def close(dask_scheduler):
        for end in list(dask_scheduler.plugins["daskgen-fast-lane"].ends):
            end.transport.close()

    return close


def _both_lanes(client, what):
    """The scheduler's lanes once both workers have theirs."""
    read = _ends()
    wait_until(lambda: len(client.run_on_scheduler(read) or {}) == 2, what, HANG)
    return client.run_on_scheduler(read)


def _work(dg):
    @dg.remote
    def square(x):
        return x * x

    @dg.remote
    def count(n):
        yield from range(n)

    def run():
        assert dg.get([square.remote(i) for i in range(20)], timeout=HANG) == [
            i * i for i in range(20)
        ]
        for _ in range(4):
            assert [dg.get(r, timeout=HANG) for r in count.remote(30)] == list(range(30))

    return run


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2, nanny=True) as c:
        yield c


def test_the_workers_take_the_lane_once_daskgen_has_sent_from_them(dg, cluster):
    dg.init(address=cluster.address)
    client = dg.get_client()
    run = _work(dg)
    run()  # the first messages ride Dask's stream; each worker opens its lane meanwhile
    before = sum(_both_lanes(client, "both workers' lanes").values())
    run()
    assert sum(client.run_on_scheduler(_ends()).values()) > before


def test_a_lane_that_closes_costs_nothing(dg, cluster):
    dg.init(address=cluster.address)
    client = dg.get_client()
    run = _work(dg)
    run()
    _both_lanes(client, "both lanes")
    client.run_on_scheduler(_close_ends())
    run()  # back on Dask's stream, then on new lanes
    before = sum(_both_lanes(client, "lanes again").values())
    run()
    assert sum(client.run_on_scheduler(_ends()).values()) > before
