"""The private Dask internals daskgen relies on (all used through ``daskgen/_dask_internals.py``).

If a Dask upgrade moves one of them, a test here fails with a message naming it, before anything
subtler breaks. Each test touches the real object, on a real in-process cluster.
"""

from __future__ import annotations

import inspect

import distributed
import pytest
import realcluster
from distributed import Client, Future, LocalCluster, Worker, WorkerPlugin
from distributed.scheduler import Scheduler

import daskgen
from daskgen import _dask_internals as dx

pytestmark = pytest.mark.daskgen_only


@pytest.fixture(scope="module")
def inproc():
    """An in-process cluster (one worker, threads), so tests can look at the objects."""
    daskgen.shutdown()
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        dashboard_address=":0",
        resources={"CPU": 2},
    )
    client = Client(cluster)
    yield client, cluster.scheduler, next(iter(cluster.workers.values()))
    daskgen.shutdown()
    client.close()
    cluster.close()


def _has(obj: object, *names: str) -> None:
    for name in names:
        assert hasattr(obj, name), f"Dask moved {type(obj).__name__}.{name}; daskgen needs it"


def test_client_internals_exist(inproc):
    client, _, _ = inproc
    _has(client, "_stream_handlers", "_send_to_scheduler", "refcount", "futures", "loop", "id")
    assert isinstance(client._stream_handlers, dict)
    fut = client.submit(int, 1)
    _has(fut, "_state")
    _has(fut._state, "wait", "set_error", "status")
    assert inspect.iscoroutinefunction(fut._state.wait)
    assert client.refcount[fut.key] >= 1


def test_client_graph_submission_internals_exist(inproc):
    client, _, _ = inproc
    from dask._expr import LLGExpr  # noqa: F401
    from dask._task_spec import Task, parse_input  # noqa: F401
    from distributed.spans import SpanMetadata  # noqa: F401

    params = inspect.signature(client._graph_to_futures).parameters
    for name in ("expr", "keys", "span_metadata", "internal_priority", "resources", "retries"):
        assert name in params, f"Client._graph_to_futures lost parameter {name!r}"


def test_submit_prebound_runs_a_task_for_a_key_already_held(inproc):
    client, _, _ = inproc
    key = "prebound-" + "a" * 32
    fut = Future(key, client)
    dx.submit_prebound(client, key, lambda x: x * 2, (21,), None, 0)
    assert fut.result(timeout=30) == 42


def test_worker_internals_exist(inproc):
    _, _, worker = inproc
    assert isinstance(worker, Worker)
    _has(worker, "stream_handlers", "batched_stream", "update_data", "data", "state", "loop")
    _has(worker.state, "tasks", "available_resources", "total_resources", "running")
    assert "data" in inspect.signature(worker.update_data).parameters
    # worker_lend_resources: on a running worker, UnpauseEvent only looks for tasks to start
    from distributed.worker_state_machine import UnpauseEvent, WorkerState

    assert "_ensure_computing" in inspect.getsource(WorkerState._handle_unpause)
    assert UnpauseEvent(stimulus_id="x").stimulus_id == "x"


def test_worker_store_keeps_the_very_object_without_copying(inproc):
    client, _, worker = inproc
    value = bytearray(b"x" * 1000)
    key = ("internals-yield-" + "b" * 32, 0)
    nbytes = client.sync(_on_loop, worker, lambda: dx.worker_store(worker, {key: value}))
    assert nbytes[key] >= 1000
    assert worker.data[key] is value
    assert worker.state.tasks[key].state == "memory"
    # storing again keeps the first value (a re-run never mixes two attempts)
    assert client.sync(_on_loop, worker, lambda: dx.worker_store(worker, {key: b"new"})) == {}
    assert worker.data[key] is value


def test_fresh_keys_are_stored_as_update_data_would_store_them(inproc):
    from distributed.spill import SpillBuffer
    from distributed.worker_state_machine import FreeKeysEvent

    client, _, worker = inproc
    state = worker.state
    _has(state, "task_counter", "log", "nbytes", "plugins", "_notify_plugins", "validate_state")
    _has(state.task_counter, "new_task", "transitions", "current_count")
    if isinstance(state.data, SpillBuffer):
        _has(state.data.fast, "total_weight", "offset", "n")
    direct, machine = ("direct-yield-" + "c" * 32, 0), ("machine-yield-" + "c" * 32, 0)
    client.sync(_on_loop, worker, lambda: dx.worker_store(worker, {direct: [1, 2, 3]}))
    client.sync(
        _on_loop, worker, lambda: worker.update_data(data={machine: [1, 2, 3]}, stimulus_id="t")
    )
    a, b = state.tasks[direct], state.tasks[machine]
    assert (a.state, a.nbytes, a.type) == (b.state, b.nbytes, b.type) == ("memory", a.nbytes, list)
    assert worker.data[direct] == [1, 2, 3]
    # Dask's own invariants: the byte count, task counters, data against tasks (other tests'
    # keys may still be leaving this worker, so no arithmetic on the totals here)
    state.validate_state()

    client.sync(
        _on_loop,
        worker,
        lambda: worker.handle_stimulus(FreeKeysEvent(keys=[direct, machine], stimulus_id="t")),
    )
    assert direct not in state.tasks and direct not in worker.data
    state.validate_state()


def test_freed_plain_keys_are_forgotten_as_the_state_machine_would(inproc):
    client, _, worker = inproc
    state = worker.state
    _has(state, "_purge_state", "actors")
    assert "free-keys" in worker.stream_handlers
    first, second = ("forget-yield-" + "d" * 32, 0), ("forget-yield-" + "d" * 32, 1)
    client.sync(_on_loop, worker, lambda: dx.worker_store(worker, {first: [1], second: [2]}))
    dx.worker_forget_directly(worker)
    dx.worker_forget_directly(worker)  # twice: still one wrapper
    handler = worker.stream_handlers["free-keys"]
    assert handler.daskgen_original is not None
    try:
        client.sync(_on_loop, worker, lambda: handler(keys=[first], stimulus_id="t"))
        assert first not in state.tasks and first not in worker.data
        assert second in worker.data
        state.validate_state()  # byte count, task counters, data against tasks
        # a key as msgpack may deliver it (a list), and one the worker does not know
        unknown = ("forget-yield-" + "e" * 32, 0)
        client.sync(
            _on_loop, worker, lambda: handler(keys=[list(second), unknown], stimulus_id="t")
        )
        assert second not in state.tasks
        state.validate_state()
    finally:
        worker.stream_handlers["free-keys"] = handler.daskgen_original


def test_light_futures_release_their_keys(inproc):
    client, scheduler, _ = inproc
    original = client.submit(int, 7, pure=False)
    _has(original, "_cleared", "_generation")
    _has(client, "_dec_ref", "_refcount_lock")
    key = original.key
    assert original.result(timeout=30) == 7
    extra = [dx.light_future(key, client) for _ in range(50)]
    assert client.refcount[key] == 51
    del extra
    realcluster.wait_until(lambda: client.refcount.get(key) == 1, "50 light futures released")
    dx.lighten(original)
    assert type(original) is dx.LightFuture
    del original
    realcluster.wait_until(lambda: key not in scheduler.tasks, "the scheduler forgot the key")
    assert key not in client.futures


def test_a_light_futures_state_makes_its_event_only_when_something_waits(inproc):
    from distributed.client import FutureState

    client, _, _ = inproc
    _has(FutureState, "_get_event", "done", "wait", "finish", "cancel", "lose", "set_error")
    assert "_event" in FutureState.__slots__
    for setter in (FutureState.finish, FutureState.cancel, FutureState.lose):
        # LazyEventState relies on Dask's setters changing the status, then the event by
        # ``_get_event()``: a setter that touched ``_event`` directly would bypass it.
        assert "self._get_event()" in inspect.getsource(setter), setter.__name__

    key = "lazy-event-" + "b" * 32  # never in the cluster: only this client's future
    future = dx.light_future(key, client)
    state = future._state
    assert type(state) is dx.LazyEventState
    assert not future.done()

    async def finish() -> None:
        dx.key_finish(client, key)

    client.sync(finish)
    assert future.status == "finished" and future.done()
    assert state._event is None  # finished without an event: nobody waited

    client.sync(dx.future_wait, future)  # the first wait makes it, already set
    assert state._event is not None and state._event.is_set()

    async def lose() -> None:
        dx.key_lose(client, key)

    client.sync(lose)
    assert not future.done() and not state._event.is_set()

    async def fail() -> None:
        dx.key_set_error(client, key, ValueError("gone"))

    client.sync(fail)
    client.sync(dx.future_wait, future)
    assert future.status == "error" and future.done()
    del future, state
    realcluster.wait_until(lambda: key not in client.futures, "the light future released")


def test_the_client_lets_its_loop_run_between_two_messages_of_one_batch(inproc):
    # Dask's report loop awaits what a stream handler returns (``yield_after`` relies on it);
    # without that, a callback queued while one message is handled waits for the whole batch.
    import asyncio

    client, scheduler, _ = inproc
    _has(client, "_handle_report")
    seen: list = []
    all_handled = asyncio.Event()

    def handler(i: int, **_) -> None:
        seen.append(f"message {i}")
        if i == 0:
            dx.on_client_loop(client, seen.append, "callback queued by message 0")
        if i == 2:
            all_handled.set()

    async def send_one_batch(yield_after: bool) -> list:
        dx.client_add_stream_handler(client, "daskgen-test-turn", handler, yield_after)
        seen.clear()
        all_handled.clear()
        for i in range(3):  # queued in the same tick: one payload on the stream
            scheduler.client_send(client.id, {"op": "daskgen-test-turn", "i": i})
        await all_handled.wait()
        await asyncio.sleep(0)  # let a callback still queued run before reading `seen`
        return list(seen)

    try:
        turns = client.sync(send_one_batch, True)
        assert turns.index("callback queued by message 0") < turns.index("message 1"), turns
        batch = client.sync(send_one_batch, False)
        assert batch[:3] == ["message 0", "message 1", "message 2"], batch  # why it is needed
    finally:
        client._stream_handlers.pop("daskgen-test-turn", None)


def test_a_client_on_the_scheduler_loop_is_found_for_direct_delivery(inproc):
    client, scheduler, _ = inproc
    assert client.scheduler.address.startswith("inproc://")
    _has(scheduler.client_comms[client.id], "buffer", "next_deadline")
    _has(client.scheduler_comm.comm, "_read_q")
    _has(client.scheduler_comm.comm._read_q, "_q")
    _has(Client, "_instances")
    realcluster.wait_until(
        lambda: client.sync(_idle_client, scheduler, client.id) is client,
        "the client is found once nothing is queued for it",
    )
    assert dx._idle_local_client(scheduler, client.id) is None  # not on the loop: never direct
    received = []
    dx.client_add_stream_handler(client, "daskgen-test-direct", lambda **m: received.append(m))
    # handled before the send returns when the client was idle (else queued: delivered later)
    was_idle = realcluster.wait_until(
        lambda: client.sync(_direct_send, scheduler, client.id), "a send found the client idle"
    )
    assert was_idle and received[-1] == {"value": 1}


def test_small_graphs_can_be_materialized_on_the_scheduler_loop(inproc):
    import distributed.scheduler as ds
    from dask._expr import LLGExpr

    client, _, _ = inproc
    _has(ds, "offload", "_materialize_graph")
    assert "offload(" in inspect.getsource(ds.Scheduler.update_graph)
    assert dx._is_small_graph(LLGExpr({"a": 1}))
    assert not dx._is_small_graph(LLGExpr({f"k{i}": i for i in range(dx.SMALL_GRAPH + 1)}))
    original = ds.offload
    dx.scheduler_materialize_small_graphs_inline(True)
    try:
        assert ds.offload is not original
        dx.scheduler_materialize_small_graphs_inline(True)  # twice: still one wrapper
        assert ds.offload.daskgen_original is original
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
        futures = client.map(abs, range(-40, 0))  # a bigger graph still goes to the thread
        assert client.gather(futures) == list(range(40, 0, -1))
    finally:
        dx.scheduler_materialize_small_graphs_inline(False)
    assert ds.offload is original


async def _idle_client(scheduler, client_id):
    return dx._idle_local_client(scheduler, client_id)


async def _direct_send(scheduler, client_id):
    idle = dx._idle_local_client(scheduler, client_id) is not None
    msg = {"op": "daskgen-test-direct", "value": 1}
    dx.scheduler_send_to_client(scheduler, client_id, msg, direct=True)
    return idle


async def _on_loop(worker, fn):
    return fn()


def test_task_state_and_resources_are_visible_from_the_task(inproc):
    client, _, _ = inproc

    def probe():
        from distributed import get_worker

        w = get_worker()
        key = w.get_current_task()
        return dx.worker_task_alive(w, key), dx.worker_current_resources(w, key)

    alive, resources = client.submit(probe, resources={"CPU": 1}).result(timeout=30)
    assert alive is True
    assert resources == {"CPU": 1}


def test_scheduler_internals_exist(inproc):
    _, scheduler, _ = inproc
    assert isinstance(scheduler, Scheduler)
    _has(
        scheduler,
        "stream_handlers",
        "client_comms",
        "tasks",
        "worker_send",
        "client_send",
        "update_data",
    )
    params = inspect.signature(scheduler.update_data).parameters
    for name in ("who_has", "nbytes", "client"):
        assert name in params, f"Scheduler.update_data lost parameter {name!r}"
    # the fast lane calls the stream handlers itself, for registered workers only
    worker = next(iter(scheduler.workers))
    assert dx.scheduler_has_worker(scheduler, worker)
    assert not dx.scheduler_has_worker(scheduler, "tcp://127.0.0.1:1")
    assert dx.scheduler_stream_handler(scheduler, "task-finished") is not None


def test_the_fast_lane_finds_the_scheduler_sizes_and_values(inproc):
    client, scheduler, worker = inproc
    assert dx.local_scheduler(client) is scheduler
    big = client.submit(lambda: b"x" * 2_000_000, key="lane-big-value")
    assert big.result() == b"x" * 2_000_000
    assert dx.scheduler_key_nbytes(scheduler, big.key) >= 2_000_000
    assert dx.scheduler_key_nbytes(scheduler, "no-such-key") == 0
    assert dx.worker_value(worker, big.key) == b"x" * 2_000_000
    with pytest.raises(KeyError):
        dx.worker_value(worker, "no-such-key")


def test_subprocess_worker_still_exists():
    from distributed.deploy.subprocess import SubprocessWorker

    params = inspect.signature(SubprocessWorker.__init__).parameters
    for name in ("scheduler", "worker_class", "worker_kwargs"):
        assert name in params


def test_daskgen_publishes_through_these_internals(inproc):
    """End to end on the in-process cluster: a yield is stored as the very object it was."""
    client, _, worker = inproc
    daskgen.init(client=client)
    try:

        @daskgen.remote
        def gen():
            yield bytearray(b"y" * 10)

        ref = next(gen.remote())
        assert daskgen.get(ref) == bytearray(b"y" * 10)
        assert ref.key in worker.data
    finally:
        daskgen.shutdown()


# --- call semantics and direct actor calls -------------------------------------------------------


# The in-process cluster's tasks run in this process, but are still pickled: module-level
# helpers, with events looked up by name.
_EVENTS: dict[str, object] = {}


def _event(name):
    import threading

    return _EVENTS.setdefault(name, threading.Event())


def _wait_for(name):
    return _event(name).wait(30)


def _where(dask_worker):
    return dask_worker.address


def _hold_then_leave(name):
    import threading

    _EVENTS[name + "-ident"] = threading.get_ident()
    _event(name + "-started").set()
    _event(name).wait(30)
    dx.worker_thread_leaves_pool()
    return "done"


def test_the_scheduler_keeps_calls_for_dasks_fire_and_forget_client(inproc):
    client, scheduler, _ = inproc
    fut = client.submit(_wait_for, "fnf", key="fnf-" + "b" * 32)
    realcluster.wait_until(lambda: fut.key in scheduler.tasks, "the task is known")
    client.sync(_on_scheduler, scheduler, dx.scheduler_fire_and_forget, [fut.key])
    ts = scheduler.tasks[fut.key]
    assert scheduler.clients["fire-and-forget"] in ts.who_wants, "Dask renamed fire-and-forget"
    _event("fnf").set()
    assert fut.result(timeout=30) is True


async def _on_scheduler(scheduler, fn, *args):
    return fn(scheduler, *args)


def test_cancel_desire_and_report_are_scheduler_methods(inproc):
    _, scheduler, _ = inproc
    for name in ("stimulus_cancel", "client_desires_keys", "client_releases_keys", "client_send"):
        assert callable(getattr(scheduler, name, None)), f"Dask moved Scheduler.{name}"
    params = inspect.signature(scheduler.stimulus_cancel).parameters
    for name in ("keys", "client", "force", "reason", "msg"):
        assert name in params, f"Scheduler.stimulus_cancel lost parameter {name!r}"


def test_the_scheduler_can_run_a_function_on_a_worker(inproc):
    client, scheduler, worker = inproc
    got = client.sync(dx.scheduler_run_on_worker, scheduler, worker.address, _where)
    assert got == worker.address


def test_a_worker_thread_can_be_detached_from_its_pool(inproc):
    """What force-cancel does: the thread leaves the pool and the task's slot is free."""
    client, _, worker = inproc
    from distributed.threadpoolexecutor import thread_state, threads_lock  # noqa: F401

    executor = worker.executors["default"]
    _has(executor, "_threads", "_adjust_thread_count")
    fut = client.submit(_hold_then_leave, "detach", key="detach-" + "c" * 32, resources={"CPU": 1})
    assert _event("detach-started").wait(30)
    threads_before = len(executor._threads)
    ident = _EVENTS["detach-ident"]
    assert client.sync(_on_worker, worker, dx.worker_detach_thread, fut.key, ident)
    assert len(executor._threads) == threads_before  # a new thread took its place
    assert worker.state.tasks[fut.key].state == "long-running"
    _event("detach").set()
    assert fut.result(timeout=30) == "done"


async def _on_worker(worker, fn, *args):
    return fn(worker, *args)


def test_a_worker_keeps_connections_for_handlers_added_at_run_time(inproc):
    _, _, worker = inproc
    _has(worker, "handlers", "rpc", "scheduler", "_get_client")
    assert "daskgen-test" not in worker.handlers
    dx.worker_add_handler(worker, "daskgen-test", lambda comm: None)
    assert dx.worker_has_handler(worker, "daskgen-test")
    del worker.handlers["daskgen-test"]


def test_a_worker_fetches_values_from_its_memory_or_its_peers(inproc):
    client, _, worker = inproc
    from distributed.utils_comm import gather_from_workers  # noqa: F401

    here = client.submit(lambda: [1, 2], key="fetch-" + "d" * 32)
    here.result(timeout=30)
    values, missing = client.sync(dx.worker_fetch, worker, [here.key, "fetch-missing"])
    assert values[here.key] is worker.data[here.key]  # the very object
    assert missing == ["fetch-missing"]


def test_a_worker_forgets_keys_the_scheduler_never_knew(inproc):
    client, scheduler, worker = inproc
    key = ("daskgen-direct-" + "e" * 32, -1)

    async def store_then_forget():
        dx.worker_store(worker, {key: b"x" * 100})
        assert worker.state.tasks[key].state == "memory"
        dx.worker_forget(worker, [key])

    client.sync(store_then_forget)
    assert key not in worker.state.tasks and key not in worker.data
    assert key not in scheduler.tasks


# --- the embedded cluster's parts -------------------------------------------------------------


def test_subprocess_worker_starts_through_the_attributes_daskgen_overrides():
    from distributed.deploy.subprocess import SubprocessWorker

    params = inspect.signature(SubprocessWorker.__init__).parameters
    for name in ("scheduler", "worker_class", "worker_kwargs"):
        assert name in params, f"SubprocessWorker lost parameter {name!r}"
    assert inspect.iscoroutinefunction(SubprocessWorker._start), "SubprocessWorker._start moved"
    cls = dx.spawned_worker_class(lambda: {}, {})
    assert issubclass(cls, SubprocessWorker) and cls._start is not SubprocessWorker._start
    # the embedded workers' processes run the ``dask spec`` command's function itself
    from distributed.cli.dask_spec import main

    assert {p.name for p in main.params} >= {"args", "spec"}, "dask spec's options moved"


def test_memory_limits_parse_as_dask_reads_them():
    assert dx.memory_limit("2GB", 2) == 2_000_000_000
    assert dx.memory_limit("auto", 2) > 0


def test_the_scheduler_and_worker_streams_are_found(inproc):
    client, scheduler, worker = inproc
    streams = dx.scheduler_batched_streams(scheduler)
    assert worker.address in streams and client.id in streams
    assert dx.scheduler_stream_to(scheduler, worker.address) is streams[worker.address]
    assert hasattr(dx.worker_batched_stream(worker), "interval")
    assert dx.scheduler_inproc_address(scheduler) == scheduler.address  # an inproc cluster
    assert dx.worker_total_resources(worker) == {"CPU": 2}
    assert not dx.worker_is_closing(worker)


def test_waiting_tasks_are_found_and_moved_through_dasks_stealing(inproc):
    client, scheduler, worker = inproc
    _has(scheduler, "running", "extensions")
    stealing = scheduler.extensions.get("stealing")
    assert stealing is not None, "Dask's work stealing extension moved"
    _has(stealing, "in_flight", "in_flight_tasks", "move_task_request")
    ws = scheduler.workers[worker.address]
    _has(ws, "processing", "long_running", "nthreads", "resources", "used_resources")
    assert dx.scheduler_free_threads(scheduler) == {worker.address: 2}  # idle
    assert dx.scheduler_waiting_behind(scheduler, 10, lambda key, w: False, str) == []
    gate = distributed.Event()
    futures = [client.submit(gate.wait, 60, resources={"CPU": 1}, pure=False) for _ in range(4)]
    try:
        realcluster.wait_until(
            lambda: all(f.key in scheduler.tasks for f in futures), "the tasks arrived"
        )
        realcluster.wait_until(lambda: len(ws.processing) == 4, "the tasks were sent to the worker")
        ts = scheduler.tasks[futures[0].key]
        _has(ts, "priority", "resource_restrictions", "worker_restrictions", "host_restrictions")
        assert dx.scheduler_free_threads(scheduler) == {}
        # two threads, four tasks: the last two in the worker's order wait (sent within Dask's
        # fifo-timeout, they share a priority: ``arrival`` orders them)
        arrival = {f.key: i for i, f in enumerate(futures)}.__getitem__
        order = sorted(futures, key=lambda f: (scheduler.tasks[f.key].priority, arrival(f.key)))
        waiting = dx.scheduler_waiting_behind(scheduler, 10, lambda key, w: False, arrival)
        assert waiting == [(f.key, worker.address) for f in order[2:]]
        # the last one known to have started (it refused to move): it holds one thread, the
        # first holds the other, and the two between them wait
        started = order[3].key
        waiting = dx.scheduler_waiting_behind(scheduler, 10, lambda k, w: k == started, arrival)
        assert waiting == [(f.key, worker.address) for f in order[1:3]]
        assert dx.scheduler_waiting_behind(scheduler, 1, lambda k, w: False, arrival) == [
            (order[2].key, worker.address)
        ]
        # one worker: nowhere else to go
        assert not dx.scheduler_task_fits(scheduler, order[3].key, worker.address, 0)
        assert not dx.scheduler_task_fits(scheduler, "no-such-key", worker.address, 0)
        _has(ws, "has_what")
        _has(ts, "dependencies", "loose_restrictions", "get_nbytes", "state", "processing_on")
        assert not dx.scheduler_move_task(scheduler, "no-such-key", worker.address)
    finally:
        gate.set()
        client.gather(futures)


def test_a_worker_refuses_dasks_steal_requests_for_the_tasks_it_is_told(inproc):
    from distributed.worker_state_machine import StealRequestEvent, StealResponseMsg

    client, scheduler, worker = inproc
    assert "steal-request" in worker.stream_handlers, "Dask's steal request moved"
    assert "steal-response" in scheduler.stream_handlers, "Dask's steal response moved"
    assert StealResponseMsg.op == "steal-response"
    assert {"key", "state"} <= set(StealResponseMsg.__slots__)
    assert {"key", "stimulus_id"} <= set(inspect.signature(StealRequestEvent).parameters)
    original = worker.stream_handlers["steal-request"]
    try:
        dx.worker_refuse_steals(worker, lambda key: key == "kept")
        wrapped = worker.stream_handlers["steal-request"]
        assert wrapped is not original
        dx.worker_refuse_steals(worker, lambda key: False)  # set once
        assert worker.stream_handlers["steal-request"] is wrapped
        # a key not refused goes to Dask's handler: unknown here, Dask answers state None
        wrapped(key="not-kept", stimulus_id="test-steal")
    finally:
        worker.stream_handlers["steal-request"] = original


def test_scheduler_plugins_are_found_by_name(inproc):
    client, scheduler, _ = inproc
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Named(SchedulerPlugin):
        name = "daskgen-test-plugin"

    client.register_plugin(Named())
    assert isinstance(dx.scheduler_plugin(scheduler, "daskgen-test-plugin"), Named)


def test_a_batched_send_runs_on_a_comm_daskgen_opens(inproc):
    client, _, worker = inproc
    from distributed.comm import connect

    async def open_and_send() -> bool:
        comm = await connect(worker.address)
        stream = dx.batched_send(comm, 0.001)
        stream.send({"op": "daskgen-no-such-op"})  # the worker logs and drops it
        await stream.close()
        return stream.comm is comm

    assert client.sync(open_and_send)


# -- what daskgen does on a user's cluster (tests/test_existing_cluster.py has the behaviour) --


def _call(client, fn, *args):
    """``fn(*args)`` on the in-process cluster's event loop, as the scheduler's handlers run."""
    return client.sync(_on_loop, None, lambda: fn(*args))


def _blocked_task(client, name: str):
    """A task that runs until the event ``name`` is set (a distributed.Event: no sleep)."""
    from distributed import Event

    def wait(event_name):
        return Event(event_name).wait(timeout=60)

    return client.submit(wait, name, pure=False), Event(name, client=client)


def test_a_worker_is_held_paused_and_its_status_reports_deferred(inproc):
    client, scheduler, worker = inproc
    _has(scheduler, "handle_worker_status_change", "stream_handlers", "workers")
    assert "worker-status-change" in scheduler.stream_handlers

    def hold(dask_scheduler):
        held = dx.scheduler_hold_worker(dask_scheduler, worker.address)
        # The worker's own report of its status, while held, waits for the release.
        handler = dask_scheduler.stream_handlers["worker-status-change"]
        handler(status="running", worker=worker.address, stimulus_id="daskgen-test")
        return held, dask_scheduler.workers[worker.address].status.name

    assert _call(client, hold, scheduler) == (True, "paused")
    future = client.submit(int, 5, pure=False)
    realcluster.wait_until(
        lambda: dx.scheduler_key_state(scheduler, future.key) in ("queued", "no-worker"),
        "the task waits for a running worker",
    )
    _call(client, dx.scheduler_release_worker, scheduler, worker.address)
    assert future.result(timeout=realcluster.HANG) == 5
    assert scheduler.workers[worker.address].status.name == "running"
    assert not dx.scheduler_hold_worker(scheduler, "tcp://127.0.0.1:1")  # not a worker


def test_tasks_are_restricted_to_workers_queued_running_or_stuck(inproc):
    client, scheduler, worker = inproc
    assert dx.scheduler_workers(scheduler) == [worker.address]
    assert {w["address"]: w["resources"] for w in dx.scheduler_worker_states(scheduler)} == {
        worker.address: {"CPU": 2}
    }
    _has(next(iter(scheduler.workers.values())), "resources")

    running, event = _blocked_task(client, "daskgen-test-restrict")
    realcluster.wait_until(
        lambda: dx.scheduler_key_state(scheduler, running.key) == "processing", "it runs"
    )
    elsewhere = "tcp://127.0.0.1:1"

    def restrict(keys, workers):
        return _call(client, dx.scheduler_restrict, scheduler, keys, workers)

    (state,) = dx.scheduler_worker_states(scheduler)
    assert state["processing"] / state["nthreads"] == 0.5  # 1 of 2 threads busy
    # A running task keeps running, restricted for any re-run.
    assert restrict([running.key], [worker.address]) == []
    assert scheduler.tasks[running.key].worker_restrictions == {worker.address}
    assert dx.scheduler_key_state(scheduler, running.key) == "processing"
    # Waiting for the running one: one is restricted to where no worker is (and later waits
    # for such a worker), one already restricted elsewhere is returned, unchanged.
    parked = client.submit(lambda x: x, running, pure=False)
    pinned = client.submit(lambda x: x, running, pure=False, workers=[worker.address])
    # loosely restricted (a direct call's task): it may go where it is allowed instead
    loose = client.submit(
        lambda x: x, running, pure=False, workers=[worker.address], allow_other_workers=True
    )
    realcluster.wait_until(
        lambda: (
            {dx.scheduler_key_state(scheduler, f.key) for f in (parked, pinned, loose)}
            == {"waiting"}
        ),
        "they reached the scheduler",
    )
    assert restrict([parked.key, pinned.key, loose.key], [elsewhere]) == [pinned.key]
    assert scheduler.tasks[parked.key].worker_restrictions == {elsewhere}
    assert scheduler.tasks[pinned.key].worker_restrictions == {worker.address}
    assert scheduler.tasks[loose.key].worker_restrictions == {elsewhere}
    client.cancel([loose])
    assert dx.scheduler_wanted_by(scheduler, [parked.key]) == {client.id: [parked.key]}
    event.set()
    assert running.result(timeout=realcluster.HANG) is True
    assert pinned.result(timeout=realcluster.HANG) is True
    realcluster.wait_until(
        lambda: dx.scheduler_key_state(scheduler, parked.key) == "no-worker", "it is parked"
    )
    assert restrict([parked.key], [worker.address]) == [parked.key]
    client.cancel([parked])


def test_an_event_topic_can_be_dropped(inproc):
    client, scheduler, _ = inproc
    _has(scheduler, "_broker")
    _has(scheduler._broker, "_topics")
    client.log_event("daskgen-test-topic", "hello")
    realcluster.wait_until(
        lambda: "daskgen-test-topic" in scheduler._broker._topics, "the event arrived"
    )
    _call(client, dx.scheduler_forget_topic, scheduler, "daskgen-test-topic")
    assert "daskgen-test-topic" not in scheduler._broker._topics


def test_released_keys_go_to_a_worker_in_one_message(inproc):
    client, scheduler, worker = inproc
    _has(scheduler, "client_releases_keys", "send_all", "stream_comms")
    futures = client.map(int, range(40), pure=False)
    client.gather(futures)
    keys = [f.key for f in futures]
    stream = scheduler.stream_comms[worker.address]
    before = stream.batch_count
    _call(client, dx.scheduler_release, scheduler, keys, client.id)
    assert "send_all" not in vars(scheduler)  # the class's own again
    realcluster.wait_until(lambda: not set(keys) & set(worker.data), "the worker freed them")
    assert not set(keys) & set(scheduler.tasks)
    sent = [
        m
        for payload in list(stream.recent_message_log)[-(stream.batch_count - before) :]
        if isinstance(payload, list)
        for m in payload
        if m.get("op") == "free-keys"
    ]
    assert len(sent) == 1, sent
    merged = sent[0]["keys"]
    assert merged == f"<{len(keys)} keys: sent>" or sorted(merged) == sorted(keys)
    del futures  # the client's releases of keys the scheduler forgot are ignored


def test_a_logged_message_is_shrunk_in_the_log_and_never_changed(inproc):
    client, _, worker = inproc
    from distributed.comm import connect, listen

    received: list = []

    async def send_and_shrink():
        async def handle(comm):
            received.extend(await comm.read())  # and the comm stays open, as Dask's do

        async with listen("inproc://", handle) as listener:
            comm = await connect(listener.contact_address)
            stream = dx.batched_send(comm, 0.001)
            _has(stream, "recent_message_log", "batch_count", "loop", "comm")
            msg = {
                "op": "daskgen-test",
                "keys": list(range(100)),
                "blob": b"x" * 10,
                "indexed": {"a": list(range(30)), "b": [1, 2]},
            }
            stream.send(msg)
            while stream.batch_count == 0:
                await asyncio.sleep(0.01)
            dx.shrink_once_logged(stream, msg)
            for _ in range(300):
                if stream.recent_message_log[-1][0].get("keys") != msg["keys"]:
                    break
                await asyncio.sleep(0.01)
            logged = stream.recent_message_log[-1][0]
            while not received:
                await asyncio.sleep(0.01)
            await stream.close()
            return msg, logged

    import asyncio

    msg, logged = client.sync(send_and_shrink)
    assert logged["keys"] == "<100 keys: sent>" and logged["blob"] == b"x" * 10
    assert logged["indexed"] == "<32 indexed: sent>"
    assert msg["keys"] == list(range(100))  # the message itself, which inproc hands over
    assert received[0]["keys"] == list(range(100))


def test_a_scheduler_plugin_is_registered_from_the_clients_loop(inproc):
    client, scheduler, _ = inproc
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Registered(SchedulerPlugin):
        pass

    client.sync(dx.client_register_scheduler_plugin, client, Registered(), "daskgen-test-reg")
    assert isinstance(scheduler.plugins["daskgen-test-reg"], Registered)
    client.unregister_scheduler_plugin("daskgen-test-reg")


def test_an_update_graph_message_for_several_tasks_is_what_the_scheduler_takes(inproc):
    from distributed.scheduler import Scheduler

    client, scheduler, _ = inproc
    params = inspect.signature(Scheduler.update_graph).parameters
    keys = [f"daskgen-batch-test-{i}" for i in range(3)]
    msg = dx.update_graph_message([(k, _double, (i,)) for i, k in enumerate(keys)], {})
    fields = set(msg) - {"op"}
    assert fields <= set(params), f"update_graph lost {fields - set(params)}"
    required = {n for n, p in params.items() if p.default is p.empty} - {"self", "client"}
    assert required <= fields, f"update_graph needs {required - fields}"
    assert hasattr(client, "_send_to_scheduler_safe"), "Client._send_to_scheduler_safe moved"
    futures = [dx.light_future(k, client) for k in keys]
    dx.on_client_loop(client, dx.client_send_now, client, msg)
    assert client.gather(futures) == [0, 2, 4]
    assert [scheduler.tasks[k].priority[-1] for k in keys] == [0, 1, 2]  # submission order


def test_packed_arguments_ride_out_of_band_in_dasks_pickle():
    """A task's large pickled arguments (``Packed``) are one out-of-band buffer of Dask's
    pickle, not bytes copied into it, and come back whole."""
    from distributed.protocol import pickle as dask_pickle

    from daskgen._protocol import Packed

    blob = bytes(range(256)) * 4096  # 1 MiB
    buffers: list = []
    head = dask_pickle.dumps(("task", Packed(blob)), buffer_callback=buffers.append)
    assert len(head) < 1024 and [memoryview(b).nbytes for b in buffers] == [len(blob)]
    _, back = dask_pickle.loads(head, buffers=buffers)
    assert type(back) is Packed and bytes(back.blob) == blob


def _double(x):
    return 2 * x


def _my_key():
    return dx.submitting_task()


def test_the_task_running_in_a_thread_is_known_there(inproc):
    client, _, _ = inproc
    future = client.submit(_my_key, pure=False)
    assert future.result() == future.key
    assert dx.submitting_task() is None  # not in a task


class _Marker(WorkerPlugin):
    """A worker plugin that leaves a mark on the worker it is set up on."""

    name = "daskgen-test-marker"

    def setup(self, worker):
        worker.daskgen_test_marked = True


def test_a_worker_plugin_registered_on_the_scheduler_reaches_workers_that_join_later(inproc):
    from distributed import Worker

    client, scheduler, worker = inproc

    async def register_then_start_a_worker():
        await dx.scheduler_register_worker_plugin(scheduler, _Marker())
        async with Worker(scheduler.address, nthreads=1) as late:
            return getattr(late, "daskgen_test_marked", False)

    try:
        assert client.sync(register_then_start_a_worker) is True
        assert getattr(worker, "daskgen_test_marked", False)  # the running one too
    finally:
        client.unregister_worker_plugin(_Marker.name)


def test_the_probe_runs_where_daskgen_cannot_be_imported(inproc):
    import cloudpickle

    from daskgen._protocol import VERSION

    probe = dx.daskgen_probe()
    assert probe() == VERSION
    assert b"daskgen._dask_internals" not in cloudpickle.dumps(probe)  # by value
    client, _, worker = inproc
    assert client.run(probe) == {worker.address: VERSION}


def test_a_worker_asks_its_scheduler(inproc):
    client, scheduler, worker = inproc
    _has(worker, "scheduler")
    scheduler.handlers["daskgen-test-ask"] = lambda: "answered"
    try:
        assert client.sync(dx.worker_ask_scheduler, worker, "daskgen-test-ask") == "answered"
    finally:
        del scheduler.handlers["daskgen-test-ask"]


def test_the_scheduler_describes_its_workers_for_introspection(inproc):
    client, scheduler, worker = inproc
    _has(
        next(iter(scheduler.workers.values())), "host", "nthreads", "memory_limit", "used_resources"
    )
    (state,) = dx.scheduler_worker_states(scheduler)
    assert state["address"] == worker.address and state["nthreads"] == 2
    assert state["resources"] == {"CPU": 2} and state["status"] == "running"
    assert set(state) >= {"host", "memory_limit", "used_resources", "processing"}


def test_tasks_are_placed_held_and_released_by_their_restrictions(inproc):
    """``scheduler_place`` (placement groups): a task restricted nowhere waits in
    ``no-worker``; placed on the worker, it runs; a host restriction is replaced."""
    client, scheduler, worker = inproc

    def place(keys, workers):
        return _call(client, dx.scheduler_place, scheduler, keys, workers)

    running, event = _blocked_task(client, "daskgen-test-place")
    held = client.submit(lambda x: x, running, pure=False, workers=["somehost"])
    realcluster.wait_until(
        lambda: dx.scheduler_key_state(scheduler, held.key) == "waiting", "it reached it"
    )
    assert scheduler.tasks[held.key].host_restrictions == {"somehost"}
    place([held.key], [])
    assert scheduler.tasks[held.key].host_restrictions is None
    event.set()
    assert running.result(timeout=realcluster.HANG) is True
    realcluster.wait_until(
        lambda: dx.scheduler_key_state(scheduler, held.key) == "no-worker", "it waits, held"
    )
    place([held.key], [worker.address])
    assert held.result(timeout=realcluster.HANG) is True
    free = client.submit(lambda: 1, pure=False, workers=["nowhere"])
    realcluster.wait_until(
        lambda: dx.scheduler_key_state(scheduler, free.key) == "no-worker", "it has no worker"
    )
    place([free.key], None)  # anywhere
    assert free.result(timeout=realcluster.HANG) == 1


def test_a_workers_nanny_memory_limit_and_liveness_are_known(inproc):
    client, scheduler, worker = inproc
    assert dx.scheduler_worker_nanny(scheduler, worker.address) is None  # no nanny here
    assert dx.scheduler_worker_nanny(scheduler, "tcp://127.0.0.1:1") is None
    assert dx.scheduler_worker_memory_limit(scheduler, worker.address) == (
        worker.memory_manager.memory_limit or 0
    )
    assert dx.scheduler_worker_memory_limit(scheduler, "tcp://127.0.0.1:1") == 0

    async def ping(address):
        return await dx.scheduler_ping(scheduler, address, 2.0)

    assert client.sync(ping, worker.address) is True
    assert client.sync(ping, "tcp://127.0.0.1:1") is False
    # The nanny's memory event reaches scheduler plugins under this topic.
    from distributed.diagnostics.plugin import SchedulerPlugin

    assert "log_event" in vars(SchedulerPlugin)
    import distributed.worker_memory as wm

    assert "worker-restart-memory" in inspect.getsource(wm.NannyMemoryManager.memory_monitor)


def test_a_persisted_dataframe_renames_each_partition_to_its_futures_key(inproc):
    # daskgen.dask.from_collection follows these renames to find each partition's future.
    import dask.dataframe as dd
    import pandas as pd
    from dask.core import flatten
    from distributed import futures_of

    client, _, _ = inproc
    frame = client.persist(dd.from_pandas(pd.DataFrame({"x": range(6)}), npartitions=3) + 1)
    held = {f.key for f in futures_of(frame)}
    graph = frame.__dask_graph__()
    targets = [dx.alias_target(graph.get(key)) for key in flatten(frame.__dask_keys__())]
    assert len(targets) == 3 and set(targets) == held, (
        "Dask no longer renames a persisted dataframe's partitions with dask._task_spec.Alias"
    )
    future = client.submit(int, 1)
    assert dx.alias_target(future) == future.key
    assert dx.alias_target((int, 1)) is None


def test_a_task_depends_on_a_key_ref_as_on_a_future(inproc):
    # daskgen.dask's tasks hold key refs, not futures (see dx.key_ref).
    client, scheduler, _ = inproc
    future = client.submit(list, range(3))
    ref = dx.key_ref(future.key)
    assert not isinstance(ref, Future)
    assert client.submit(len, ref, pure=False).result(timeout=30) == 3
    assert scheduler.tasks[future.key].state == "memory"


def test_direct_calls_take_and_give_back_a_workers_slot_and_know_its_loop(inproc):
    """``worker_take_slot`` / ``worker_return_slot`` (``_worker.direct``): the worker's state
    machine counts one thread fewer while a slot is taken; ``worker_store_computed`` puts a
    value in memory with its run's start and stop; ``on_a_workers_loop`` tells the worker's
    loop (``Worker._instances``) from any other thread."""
    client, _, worker = inproc
    assert worker.state.nthreads == 2
    assert _call(client, dx.worker_take_slot, worker) is True
    assert worker.state.nthreads == 1
    assert _call(client, dx.worker_take_slot, worker, lambda key: False, True) is True
    assert worker.state.nthreads == 0
    _call(client, dx.worker_return_slot, worker)
    _call(client, dx.worker_return_slot, worker)
    assert worker.state.nthreads == 2
    assert client.submit(lambda: 3, pure=False).result(timeout=realcluster.HANG) == 3
    assert _call(client, dx.worker_store_computed, worker, "daskgen-test-direct", 7, 1.0, 2.0)
    ts = worker.state.tasks["daskgen-test-direct"]
    assert ts.state == "memory" and worker.data["daskgen-test-direct"] == 7
    assert ts.startstops == [{"action": "compute", "start": 1.0, "stop": 2.0}]
    assert dx.worker_key_asked(worker, "daskgen-test-direct") is False
    assert not _call(client, dx.worker_store_computed, worker, "daskgen-test-direct", 8, 1, 2)
    _call(client, dx.worker_forget, worker, ["daskgen-test-direct"])
    assert not dx.on_a_workers_loop()
    assert client.sync(_on_loop, None, dx.on_a_workers_loop) is True


def test_a_worker_reports_tasks_that_become_ready_and_counts_those_short_of_a_slot(
    inproc, tmp_path
):
    """``worker_on_task_waiting`` (a plugin in ``WorkerState.plugins`` gets each transition)
    and ``worker_slots_short`` (``state.ready`` / ``constrained`` / ``executing`` against
    ``nthreads``), used by ``_worker.direct._make_room``."""
    import threading

    client, _, worker = inproc
    became_ready = threading.Event()
    _call(client, dx.worker_on_task_waiting, worker, "daskgen-test-watch", became_ready.set)
    try:
        assert _call(client, dx.worker_slots_short, worker, lambda key: False) <= -2
        mark, wait_for = realcluster.file_signals()
        blockers = [
            client.submit(wait_for, str(tmp_path), "go", realcluster.HANG, pure=False)
            for _ in range(3)
        ]
        assert became_ready.wait(realcluster.HANG)
        realcluster.wait_until(
            lambda: _call(client, dx.worker_slots_short, worker, lambda key: False) == 1,
            "three tasks on two slots: one short",
            realcluster.HANG,
        )
        waiting = [b.key for b in blockers if worker.state.tasks[b.key].state == "ready"]
        assert _call(client, dx.worker_slots_short, worker, lambda key: key in waiting) == 0
        mark(str(tmp_path), "go")
        assert all(b.result(timeout=realcluster.HANG) for b in blockers)
    finally:
        _call(client, dx.worker_stop_watching, worker, "daskgen-test-watch")
    assert "daskgen-test-watch" not in worker.plugins


def test_the_scheduler_runs_a_callback_later_on_its_loop(inproc):
    client, scheduler, _ = inproc
    import threading

    ran = threading.Event()
    _call(client, dx.scheduler_call_later, scheduler, 0.01, ran.set)
    assert ran.wait(realcluster.HANG)
