"""Plain task calls sent straight to a worker (``daskgen/_client/direct.py``,
``daskgen/_worker/direct.py``): a lone call runs at once on its leased worker and its Dask task
ends there with the call's value; calls made while one is in flight go through the scheduler
alone; a worker with no free slot runs the call as its Dask task; a direct call's ref passed on
works; a direct call holds its worker's slot (and lends it while it waits in ``get``); and a
worker that dies under it has the call run again elsewhere. On the embedded cluster and on
real ``dask scheduler`` + ``dask worker`` processes.

What such calls do for the user (values, errors, cancel, output) is the parity suites': a lone
``.remote()`` there now takes this path, on both clusters."""

from __future__ import annotations

import pytest
import realcluster
from realcluster import HANG, start_cluster, wait_until

pytestmark = pytest.mark.daskgen_only

_mark, _wait_for = realcluster.file_signals()


def _where(api):
    """A task answering whether it ran as a direct call (in daskgen's own thread), once one has
    (the first calls open the connection to the leased worker: they may run as Dask tasks)."""

    @api.remote
    def where(x, directory=None, name=None):
        import threading

        if directory is not None:
            _mark(directory, f"{name}-started")
            _wait_for(directory, f"{name}-go", HANG)
        return x, threading.current_thread().name.startswith("daskgen-direct")

    wait_until(lambda: api.get(where.remote(None), timeout=HANG)[1], "a call runs direct", HANG)
    return where


def _scheduler_knows(api, key) -> bool:
    return api.get_client().run_on_scheduler(
        lambda dask_scheduler, key=key: key in dask_scheduler.tasks
    )


def test_a_lone_call_runs_straight_on_a_worker_and_is_its_dask_task_there(api):
    where = _where(api)
    ref = where.remote(21)
    assert api.get(ref, timeout=HANG) == (21, True)
    client = api.get_client()
    key = ref.key

    def where_held():
        return client.run_on_scheduler(
            lambda dask_scheduler, key=key: (
                (
                    dask_scheduler.tasks[key].state,
                    sorted(ws.address for ws in dask_scheduler.tasks[key].who_has or ()),
                )
                if key in dask_scheduler.tasks
                else None
            )
        )

    # Its Dask task ends on the worker that ran the call, with the call's value (not run again).
    wait_until(lambda: (where_held() or ("",))[0] == "memory", "its task in memory", HANG)
    (holder,) = [w for w in where_held()[1]]
    assert client.gather(ref._future) == (21, True)
    del ref

    def held_anywhere():
        found = client.run(lambda dask_worker, key=key: key in dask_worker.data)
        return any(found.values()) or where_held() is not None

    wait_until(lambda: not held_anywhere(), "the dropped result freed everywhere", HANG)


def test_calls_made_while_one_is_in_flight_go_through_the_scheduler(api, tmp_path):
    where = _where(api)
    first = where.remote(0, str(tmp_path), "first")
    wait_until(lambda: (tmp_path / "first-started").exists(), "the first call started", HANG)
    burst = [where.remote(i) for i in range(1, 6)]
    # (Dask may queue one of them behind the first call on its worker, as behind any task.)
    _mark(str(tmp_path), "first-go")
    assert api.get(burst, timeout=HANG) == [(i, False) for i in range(1, 6)]
    assert api.get(first, timeout=HANG) == (0, True)


def test_a_direct_calls_ref_passed_on_works_before_and_after_its_result_came(api, tmp_path):
    where = _where(api)

    @api.remote
    def add_one(pair):
        return pair[0] + 1

    @api.remote
    def get_nested(refs):
        return [api.get(r)[0] for r in refs]

    ref = where.remote(1)
    assert api.get(ref, timeout=HANG) == (1, True)
    assert api.get(add_one.remote(ref), timeout=HANG) == 2  # as a top-level argument
    assert api.get(get_nested.remote([ref]), timeout=HANG) == [1]  # nested
    # Passed on before its result came back, and to an actor (another process's want)
    slow = where.remote(2, str(tmp_path), "slow")
    wait_until(lambda: (tmp_path / "slow-started").exists(), "the call runs", HANG)

    @api.remote
    class Echo:
        def first(self, refs):
            return api.get(refs[0])[0]

    echo = Echo.remote()
    pending = [add_one.remote(slow), get_nested.remote([slow]), echo.first.remote([slow])]
    _mark(str(tmp_path), "slow-go")
    assert api.get(pending, timeout=HANG) == [3, [2], 2]


def test_a_call_its_worker_has_no_slot_for_goes_through_the_scheduler(api, tmp_path):
    """Both workers' slots are taken by Dask tasks (submitted with the raw client): the leased
    worker answers busy, and the call runs through the scheduler once a slot is free."""
    where = _where(api)
    client = api.get_client()
    workers = sorted(client.scheduler_info()["workers"])
    blockers = [
        client.submit(_wait_for, str(tmp_path), f"go-{i}", HANG, workers=[w], pure=False)
        for i, w in enumerate(workers)
    ]

    def both_running():
        executing = client.run(lambda dask_worker: len(dask_worker.state.executing))
        return sum(executing.values()) == len(workers)

    wait_until(both_running, "both workers run a blocker", HANG)
    ref = where.remote(7)
    # Refused (busy), it is submitted to the scheduler at once; only then are the slots freed.
    wait_until(lambda: _scheduler_knows(api, ref.key), "the call went to the scheduler", HANG)
    for i in range(len(workers)):
        _mark(str(tmp_path), f"go-{i}")
    assert api.get(ref, timeout=HANG) == (7, False)
    assert all(b.result(timeout=HANG) for b in blockers)


def test_a_direct_calls_task_refuses_dasks_work_stealing_and_the_function_runs_once(api, tmp_path):
    """While a direct call runs, its Dask task waits on the leased worker for the call's value.
    Dask's work stealing asks that worker to give the task up (it has not started it): the
    worker refuses, as for a running task, so the function does not run again elsewhere."""
    where = _where(api)
    client = api.get_client()
    ref = where.remote(5, str(tmp_path), "call")
    _wait_for(str(tmp_path), "call-started", HANG)
    key = ref.key

    def placed(dask_scheduler, key=key):
        ts = dask_scheduler.tasks.get(key)
        return ts.processing_on.address if ts is not None and ts.processing_on else None

    wait_until(lambda: client.run_on_scheduler(placed), "the call's task reached its worker", HANG)
    leased = client.run_on_scheduler(placed)
    wait_until(
        lambda: client.run(lambda dask_worker, key=key: key in dask_worker.state.tasks)[leased],
        "the leased worker holds the call's task",
        HANG,
    )

    def steal(dask_scheduler, key=key):
        stealing = dask_scheduler.extensions["stealing"]
        ts = dask_scheduler.tasks[key]
        thief = next(ws for ws in dask_scheduler.workers.values() if ws is not ts.processing_on)
        return stealing.move_task_request(ts, ts.processing_on, thief)

    assert client.run_on_scheduler(steal).startswith("steal-")

    def answered(dask_scheduler, key=key):
        return dask_scheduler.tasks[key] not in dask_scheduler.extensions["stealing"].in_flight

    wait_until(lambda: client.run_on_scheduler(answered), "the worker answered", HANG)
    assert client.run_on_scheduler(placed) == leased  # left where the call runs
    _mark(str(tmp_path), "call-go")
    assert api.get(ref, timeout=HANG) == (5, True)


def _check_a_busy_call_runs_on_the_free_worker(api, tmp_path):
    """The leased worker runs a long Dask task, the other is free: a lone call (answered
    ``busy``) returns before the long task ends, run as a Dask task on the free worker."""
    from daskgen._client import direct

    client = api.get_client()
    where = _where(api)
    leased = direct._leases[client]
    blocker = client.submit(_wait_for, str(tmp_path), "go", HANG, workers=[leased], pure=False)
    try:
        wait_until(
            lambda: client.run(lambda dask_worker: len(dask_worker.state.executing))[leased],
            "the leased worker runs the long task",
            HANG,
        )
        # before the long task ends (it waits up to HANG for its go: a shorter bound here)
        assert api.get(where.remote(3), timeout=HANG / 2) == (3, False)
    finally:
        _mark(str(tmp_path), "go")
    assert blocker.result(timeout=HANG)


def test_a_call_its_leased_worker_has_no_slot_for_runs_on_a_free_worker(dg, tmp_path):
    """The embedded cluster: the leased worker runs a long Dask task, the other is free. A lone
    call answered ``busy`` runs on the free worker at once (its Dask task, still in the
    client's batch, loses the restriction to the leased worker), not after the long task."""
    import dask

    with dask.config.set({"distributed.scheduler.work-stealing": False}):  # not by stealing
        dg.init(num_cpus=2)
    _check_a_busy_call_runs_on_the_free_worker(dg, tmp_path)


def test_a_busy_calls_task_sent_to_its_leased_worker_moves_to_a_free_one(api, tmp_path):
    """The leased worker runs a long Dask task, the other is free; a lone call answered
    ``busy`` runs at once on the free worker. On a real cluster its task was sent to the
    scheduler restricted loosely to the leased worker (the embedded client's batch drops the
    restriction first): it moves to the free worker (Dask's work stealing or
    ``_scheduler.waiting``, whichever comes first)."""
    _check_a_busy_call_runs_on_the_free_worker(api, tmp_path)


def test_a_direct_call_holds_its_workers_slot_and_lends_it_while_it_waits(dg, tmp_path):
    """One worker with one thread: while a direct call runs, a Dask task waits for the slot
    (the worker's state machine counts none free); a direct call that waits in ``get`` for a
    child lends the slot to it (no deadlock)."""
    with start_cluster(tmp_path / "cluster", n_workers=1, nanny=True) as cluster:
        dg.init(address=cluster.address)
        client = dg.get_client()
        where = _where(dg)
        held = where.remote(1, str(tmp_path), "held")
        wait_until(lambda: (tmp_path / "held-started").exists(), "the direct call runs", HANG)
        other = client.submit(lambda: "other", pure=False)
        state = lambda dask_worker: (  # noqa: E731
            dask_worker.state.nthreads,
            len(dask_worker.state.executing),
            len(dask_worker.state.ready),
        )
        wait_until(
            lambda: list(client.run(state).values()) == [(0, 0, 1)],
            "the Dask task waits for the slot the direct call holds",
            HANG,
        )
        _mark(str(tmp_path), "held-go")
        assert dg.get(held, timeout=HANG) == (1, True)
        assert other.result(timeout=HANG) == "other"
        wait_until(lambda: list(client.run(state).values()) == [(1, 0, 0)], "slot back", HANG)

        @dg.remote
        def parent(n):
            children = [where.remote(i) for i in range(n)]
            return [x for x, _ in dg.get(children)]

        assert dg.get(parent.remote(3), timeout=HANG) == [0, 1, 2]


def test_a_task_placed_before_the_scheduler_knew_of_a_direct_call_does_not_wait_behind_it(
    dg, tmp_path, monkeypatch
):
    """One worker with one thread, the direct call's Dask task held back in the client's batch:
    the scheduler sends a task to the worker it sees idle, where the direct call runs. That
    task runs at once (the call gives its slot back), not after the call: it was submitted
    first as far as the scheduler knows (the race behind a generator's task waiting 30 s for a
    plain call made after it); and the slot count is right again once both ended."""
    from daskgen._client import direct

    dg.init(num_cpus=1)
    client = dg.get_client()
    where = _where(dg)
    last = where.remote(0)  # once the scheduler has it, no batch waits to be sent
    wait_until(lambda: _scheduler_knows(dg, last.key), "the last call's task sent", HANG)
    monkeypatch.setattr(direct, "TASK_DELAY_S", HANG)  # its Dask task waits in the batch
    held = where.remote(1, str(tmp_path), "held")
    wait_until(lambda: (tmp_path / "held-started").exists(), "the direct call runs", HANG)
    assert not _scheduler_knows(dg, held.key)
    other = client.submit(lambda: "other", pure=False)
    # before the call ends (it waits up to HANG for its go: a shorter bound here)
    assert other.result(timeout=HANG / 2) == "other"
    _mark(str(tmp_path), "held-go")
    assert dg.get(held, timeout=HANG) == (1, True)
    # a ref passed on sends the held-back task (``batching.flush``): the call's value is there
    assert dg.get(where.remote(held), timeout=HANG)[0] == (1, True)
    state = lambda dask_worker: (  # noqa: E731
        dask_worker.state.nthreads,
        len(dask_worker.state.executing),
        len(dask_worker.state.ready),
    )
    wait_until(lambda: list(client.run(state).values()) == [(1, 0, 0)], "slots right", HANG)
    wait_until(lambda: _scheduler_knows(dg, held.key), "the call's task reached it", HANG)


def test_a_driver_whose_leased_worker_left_leases_another(dg, tmp_path):
    """The leased worker's process ends: the driver's next lone calls run direct on the
    other worker."""
    import os

    from daskgen._client import direct

    with start_cluster(tmp_path / "cluster", n_workers=2, nanny=False) as cluster:
        dg.init(address=cluster.address)
        client = dg.get_client()
        _where(dg)
        leased = direct._leases[client]
        cluster.kill_worker(client.run(os.getpid, workers=[leased])[leased])
        wait_until(
            lambda: leased not in client.scheduler_info()["workers"], "the worker left", HANG
        )
        where = _where(dg)  # a call runs direct again
        assert direct._leases[client] != leased
        assert dg.get(where.remote(5), timeout=HANG)[0] == 5


@pytest.mark.parametrize("max_retries", [3, 0])
def test_a_direct_call_whose_worker_dies_runs_again_through_the_scheduler(
    dg, tmp_path, max_retries
):
    attempt = realcluster.attempt_counter()
    mark, wait_for = _mark, _wait_for

    with start_cluster(tmp_path / "cluster", n_workers=2) as cluster:
        dg.init(address=cluster.address)

        @dg.remote(max_retries=max_retries)
        def task(directory):
            import os
            import threading

            n = attempt(directory)
            mark(directory, f"pid-{n}", str(os.getpid()))
            if n == 1:
                wait_for(directory, "never", HANG)
            return n, threading.current_thread().name.startswith("daskgen-direct")

        ref = task.remote(str(tmp_path))
        pid = int(realcluster.read_marker(tmp_path, "pid-1"))
        cluster.kill_worker(pid)
        if max_retries == 0:
            with pytest.raises(dg.exceptions.WorkerCrashedError):
                dg.get(ref, timeout=HANG)
        else:
            assert dg.get(ref, timeout=HANG) == (2, False)


def test_a_handle_captured_by_a_functions_globals_runs_in_its_task_not_on_the_workers_loop(
    api,
):
    """Ray's progress-actor pattern: a task's function refers to an actor handle (a ref
    inside). Dask unpickles a task as it reaches the worker, on the worker's event loop, where
    no task runs: the function is unpickled when it first runs instead (``LazySpec``), and no
    daskgen session is ever started inside a worker process."""
    import daskgen

    @api.remote
    class Progress:
        def __init__(self):
            self.n = 0

        def report(self):
            self.n += 1

        def get(self):
            return self.n

    progress = Progress.remote()

    @api.remote
    def work(i):
        progress.report.remote()  # the captured handle, used in the task
        return i

    @api.remote
    def parent(n):
        return sum(api.get(work.remote(i)) for i in range(n))  # work, captured, used in a task

    assert api.get([work.remote(i) for i in range(5)], timeout=HANG) == list(range(5))
    assert api.get(parent.remote(4), timeout=HANG) == 6
    wait_until(lambda: api.get(progress.get.remote(), timeout=HANG) == 9, "9 reports", HANG)
    sessions = api.get_client().run(lambda: daskgen._runtime.session is None)
    assert all(sessions.values()), sessions
