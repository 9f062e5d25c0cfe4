"""Calls made from inside a task or an actor's method get the driver's speed-ups, on the
embedded cluster and on a real one: their small results arrive inline with the task's
completion (no fetch through Dask's gather), for ``get`` one at a time, ``get`` of many and a
``wait`` loop, and a large argument is stored on the caller's own worker. (That such calls
reach the scheduler in batches is ``test_batching``'s.) And a task waiting a second time lends
its CPU to the children queued behind it. daskgen only: how a value travels is Dask's side."""

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


def _check_inline_in_actors(api):
    """The same from an actor's method, which also hands a child a large list by value
    (stored on the actor's worker)."""

    @api.remote
    def tiny(x):
        return x * 2

    @api.remote
    def length(xs):
        return len(xs)

    @api.remote
    class Caller:
        def calls(self, n):
            from daskgen._client import stored_args
            from daskgen._objects import resolve

            before, stored = resolve.gathered, stored_args.stored
            one_by_one = [api.get(tiny.remote(i)) for i in range(n)]
            pending, waited = [tiny.remote(i) for i in range(n)], []
            while pending:
                done, pending = api.wait(pending, num_returns=1)
                waited += api.get(done)
            big = api.get(length.remote(list(range(300_000))))
            return resolve.gathered - before, stored_args.stored - stored, one_by_one, waited, big

    n = 20
    gathered, stored, one_by_one, waited, big = api.get(
        Caller.remote().calls.remote(n), timeout=HANG
    )
    assert one_by_one == sorted(waited) == [2 * i for i in range(n)]
    assert big == 300_000 and stored == 1
    assert gathered == 0


def test_results_inside_a_task_come_inline_embedded(ray):
    _check_inline_in_tasks(ray)
    _check_inline_in_actors(ray)


def test_results_inside_a_task_come_inline_real(dg, tmp_path):
    with start_cluster(tmp_path / "cluster", n_workers=2, nanny=True) as cluster:
        dg.init(address=cluster.address)
        _check_inline_in_tasks(dg)
        _check_inline_in_actors(dg)


def test_a_second_wait_in_a_task_lends_its_cpu_to_a_child_queued_behind_it(dg):
    """One worker with one CPU. The parent waits once (Dask marks it long-running), takes its
    CPU back, submits a child, which queues on the worker for that CPU, then waits again: the
    CPU lent back must start the child (Dask's second secede is a no-op that looks at nothing;
    a ``wait`` loop in a task hung for ever that way)."""
    dg.init(num_cpus=1)

    @dg.remote
    def child(x):
        return x + 1

    @dg.remote
    def parent():
        import time

        from distributed import get_worker

        worker = get_worker()
        assert dg.get(child.remote(0)) == 1  # the first wait
        ref = child.remote(1)
        deadline = time.monotonic() + HANG
        while True:  # the child reached this worker and waits for the CPU (bounded)
            ts = worker.state.tasks.get(ref.key)
            if ts is not None and ts.state == "constrained":
                break
            assert time.monotonic() < deadline, "the child never queued here"
            time.sleep(0.005)
        return dg.get(ref, timeout=HANG)  # the second wait

    assert dg.get(parent.remote(), timeout=2 * HANG) == 2
