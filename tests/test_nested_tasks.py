"""Calls made from inside a task get the driver's speed-ups, on the embedded cluster and on a
real one: their small results arrive inline with the task's completion (no fetch through Dask's
gather), for ``get`` one at a time, ``get`` of many and a ``wait`` loop. (That such calls reach
the scheduler in batches is ``test_batching``'s.) daskgen only: how a value travels is Dask's
side."""

from __future__ import annotations

import pytest
from realcluster import HANG, start_cluster

pytestmark = pytest.mark.daskgen_only


def _check_inline_in_tasks(api):
    @api.remote
    def tiny(x):
        return x * 2

    @api.remote
    def outer(n):
        from daskgen._objects import resolve

        before = resolve.gathered
        one_by_one = [api.get(tiny.remote(i)) for i in range(n)]
        together = api.get([tiny.remote(i) for i in range(5 * n)])
        pending, waited = [tiny.remote(i) for i in range(n)], []
        while pending:
            done, pending = api.wait(pending, num_returns=1)
            waited += api.get(done)
        return resolve.gathered - before, one_by_one, together, sorted(waited)

    n = 30
    gathered, one_by_one, together, waited = api.get(outer.remote(n), timeout=HANG)
    assert one_by_one == waited == [2 * i for i in range(n)]
    assert together == [2 * i for i in range(5 * n)]
    assert gathered == 0  # every result came inline


def test_results_inside_a_task_come_inline_embedded(ray):
    _check_inline_in_tasks(ray)


def test_results_inside_a_task_come_inline_real(dg, tmp_path):
    with start_cluster(tmp_path / "cluster", n_workers=2, nanny=True) as cluster:
        dg.init(address=cluster.address)
        _check_inline_in_tasks(dg)
