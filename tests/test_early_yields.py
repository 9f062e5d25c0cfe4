"""Small yields of a streaming generator reach its caller straight from the producing worker
(``Producer._send_early``, ``GenState.on_early``), ahead of the scheduler's announcement, on the
embedded cluster and on real ``dask scheduler`` + ``dask worker`` processes: their refs work
at once (``get``, passed to a task or an actor, nested), and refs dropped before the scheduler
knew their keys are freed once it does. daskgen only: how an announcement travels is Dask's
side of things."""

from __future__ import annotations

import gc

import pytest
from realcluster import HANG, wait_until

pytestmark = pytest.mark.daskgen_only


def _paced(api):
    @api.remote
    def paced(n):
        import time

        for i in range(n):
            time.sleep(0.005)  # one at a time: each goes early, not in a burst
            yield i

    return paced


def _task_count(client):
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def test_paced_yields_come_straight_from_the_worker_and_their_refs_work_at_once(api):
    from daskgen._objects import genstate

    paced = _paced(api)

    @api.remote
    def plus_one(x):
        return x + 1

    @api.remote
    def first(refs):
        return api.get(refs[0])

    @api.remote
    class Keeper:
        def first(self, refs):
            return api.get(refs[0])

    keeper = Keeper.remote()
    api.get(keeper.first.remote([api.put(0)]), timeout=HANG)
    before = genstate.early_received
    got, passed, nested, to_actor = [], [], [], []
    for ref in paced.remote(40):
        got.append(api.get(ref, timeout=HANG))
        passed.append(plus_one.remote(ref))  # at once: maybe before the scheduler knows it
        nested.append(first.remote([ref]))
        to_actor.append(keeper.first.remote([ref]))
    assert got == list(range(40))
    assert api.get(passed, timeout=HANG) == list(range(1, 41))
    assert api.get(nested, timeout=HANG) == list(range(40))
    assert api.get(to_actor, timeout=HANG) == list(range(40))
    # after the first yields (the connection to the worker opens meanwhile) they come early
    assert genstate.early_received - before >= 20


def test_refs_dropped_before_the_scheduler_knew_them_are_freed(api):
    paced = _paced(api)
    client = api.get_client()
    gc.collect()
    baseline = _task_count(client)
    for _round in range(3):
        count = 0
        for _ref in paced.remote(60):  # each ref dropped as soon as the next one comes
            count += 1
        assert count == 60
    del _ref
    gc.collect()
    wait_until(lambda: _task_count(client) <= baseline, "every yield freed", HANG)
