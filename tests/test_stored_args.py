"""A call's large arguments stored as a key of their own on the submitter's side of the cluster
(``daskgen._client.stored_args``), on the embedded cluster and on a real one: they went that
way, the task runs where they are (no worker-to-worker transfer), from the driver and from
inside a task, the task gets the value (read-only arrays, its own copy of a list), the keys
are freed once the tasks have run, and a worker that dies holding them before the task ran
costs the call nothing but time. daskgen only (where arguments live is Dask's side)."""

from __future__ import annotations

import numpy as np
import pytest
from realcluster import HANG, start_cluster, wait_until

pytestmark = pytest.mark.daskgen_only

MB = 2**20
ARGS = "daskgen-args-"


def _client():
    from daskgen import _runtime

    return _runtime.client()


def _probes():
    """By value (defined here, not at module level, which the cluster cannot import)."""

    def args_keys(dask_scheduler):
        return {
            str(k): [ws.address for ws in ts.who_has]
            for k, ts in dask_scheduler.tasks.items()
            if str(k).startswith(ARGS)
        }

    def args_transfers(dask_worker):
        """Stored-argument keys this worker fetched from another worker."""
        return [
            str(k)
            for entry in dask_worker.transfer_incoming_log
            for k in entry.get("keys", ())
            if str(k).startswith(ARGS)
        ]

    def n_tasks(dask_scheduler):
        return len(dask_scheduler.tasks)

    def stored():
        from daskgen._client import stored_args

        return stored_args.stored

    def pid_of(dask_scheduler, address):
        return dask_scheduler.workers[address].pid

    return args_keys, args_transfers, n_tasks, stored, pid_of


def _functions(api):
    @api.remote
    def where(a):
        from distributed import get_worker

        try:
            a[0] = -1
            writable = True
        except ValueError:
            writable = False
        return get_worker().address, float(a.sum()), writable

    @api.remote
    def child(xs):
        from distributed import get_worker

        xs.append(-1)  # its own copy: the parent's list stays as it was
        return get_worker().address, len(xs), xs[0]

    @api.remote
    def parent(n):
        from distributed import get_worker

        xs = list(range(n))  # pickles to over 1 MiB: stored on this very worker
        got = [api.get(child.remote(xs)) for _ in range(2)]
        return get_worker().address, len(xs), got

    return where, parent


def _check_stored_arguments(api):
    client = _client()
    args_keys, args_transfers, n_tasks, stored, _ = _probes()
    where, parent = _functions(api)
    api.get(where.remote(np.ones(4)), timeout=HANG)  # warm: both functions known, workers up
    baseline = client.run_on_scheduler(n_tasks)
    before, in_workers = stored(), sum(client.run(stored).values())

    # From the driver: 8 calls, each an array of 2 MB by value.
    arrays = [np.full(2 * MB // 8, i, dtype=np.float64) for i in range(8)]
    refs = [where.remote(a) for a in arrays]
    for a in arrays:
        a[:] = -5  # after the call: the tasks see the values at the call
    results = api.get(refs, timeout=HANG)
    assert [r[1] for r in results] == [i * (2 * MB // 8) for i in range(8)]
    assert [r[2] for r in results] == [False] * 8  # read-only, as on Ray
    assert stored() - before == 8
    assert len({r[0] for r in results}) == 2  # spread over both workers, in turn

    # From inside a task: the child's list is stored on the parent's worker, and the child
    # runs there (its parent waits in get, so the worker has a free thread).
    n = 300_000
    address, length, got = api.get(parent.remote(n), timeout=HANG)
    assert length == n
    assert got == [(address, n + 1, 0)] * 2
    assert sum(client.run(stored).values()) - in_workers == 2  # stored by the parent

    assert not any(client.run(args_transfers).values())  # each task ran where its args were
    del refs, results
    wait_until(
        lambda: (
            not client.run_on_scheduler(args_keys) and client.run_on_scheduler(n_tasks) <= baseline
        ),
        "the stored arguments were freed",
        timeout=HANG,
    )


def test_large_arguments_are_stored_where_the_task_runs_and_freed_embedded(ray):
    _check_stored_arguments(ray)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2, nanny=True) as c:
        yield c


def test_large_arguments_are_stored_where_the_task_runs_and_freed_real(dg, cluster):
    dg.init(address=cluster.address)
    _check_stored_arguments(dg)


def test_a_worker_dying_with_the_arguments_before_the_task_ran_costs_nothing(dg, cluster):
    """The task waits for a gate; the worker holding its stored arguments is killed; the call
    stores them again and its task runs, with the value at the call."""
    from distributed import Event

    dg.init(address=cluster.address)
    client = _client()
    args_keys, _, _, _, pid_of = _probes()

    @dg.remote
    def gate(name):
        from distributed import Event

        return Event(name).wait(HANG)

    @dg.remote
    def total(a, opened):
        assert opened
        return float(a.sum())

    event = Event("daskgen-test-gate", client=client)
    a = np.ones(2 * MB // 8)
    ref = total.remote(a, gate.remote("daskgen-test-gate"))
    holders = wait_until(lambda: client.run_on_scheduler(args_keys), "the arguments were stored")
    (holder,) = next(iter(holders.values()))
    pid = client.run_on_scheduler(pid_of, address=holder)
    cluster.kill_worker_process(pid)
    event.set()
    assert dg.get(ref, timeout=HANG) == float(len(a))
    cluster.wait_for_workers(2)


def _lent_out():
    from daskgen._client import actor_channel

    return sum(ch._segments.lent_out() for ch in actor_channel._channels.values() if ch._segments)


@pytest.mark.parametrize("way", ["shared memory", "tight shared memory", "socket"])
def test_stored_arguments_reach_a_worker_on_this_host_every_way(dg, cluster, monkeypatch, way):
    """On this host the arguments go as shared memory; with a budget too small for them all
    (segments evicted, unmapped by the worker), or none, over the wire's socket: the values
    are the same, and every segment lent comes back once the tasks have run."""
    from daskgen._client import shared_memory

    if way == "socket":
        monkeypatch.setattr(shared_memory, "AVAILABLE", False)
    if way == "tight shared memory":
        monkeypatch.setattr(shared_memory, "BUDGET", 6 * MB)
    dg.init(address=cluster.address)

    @dg.remote
    def total(*arrays):
        return [float(a.sum()) for a in arrays]

    before = shared_memory.lent
    sizes = [2 * MB, 5 * MB, 2 * MB, 3 * MB + 5, 2 * MB]
    calls = []
    for i, nbytes in enumerate(sizes * 3):
        arrays = [np.full(nbytes // 8, i, dtype=np.float64), np.ones(MB // 8)]
        calls.append((dg.get(total.remote(*arrays), timeout=HANG), arrays))
    for got, arrays in calls:
        assert got == [float(a.sum()) for a in arrays]
    lent = shared_memory.lent - before
    if way == "socket":
        assert lent == 0
    else:
        assert lent >= len(calls)  # (tight: some calls found no room and took the socket)
    wait_until(lambda: _lent_out() == 0, "every segment came back", timeout=HANG)
