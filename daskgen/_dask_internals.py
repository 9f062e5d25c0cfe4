"""Every private dask.distributed internal daskgen touches, and nothing else.

Dask's public API has no way to turn a value that lives in a running task into a key of its own
(``scatter`` pickles and copies it, and costs ~100x more per small item: see
``benchmarks/publish_mechanisms.py``), so the yield mechanism uses a few
internals. They are wrapped here, one small function each, so that a Dask upgrade that moves one
breaks exactly one place; ``tests/test_dask_internals.py`` checks each of them against the
installed Dask and fails loudly when one is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from time import time
from typing import Any

import dask
from dask.sizeof import sizeof
from distributed import Client, Future, Worker, WorkerPlugin
from distributed.client import FutureState
from distributed.deploy.subprocess import SubprocessWorker
from distributed.protocol.serialize import Serialize, Serialized, deserialize
from distributed.scheduler import Scheduler
from distributed.spill import SpillBuffer
from distributed.worker_state_machine import FreeKeysEvent, TaskState

from ._protocol import as_key

Key = Any

# --------------------------------------------------------------------------------------- client


def _loop(client: Client) -> Any:
    loop = client.loop
    assert loop is not None, "the client is closed"
    return loop


class LightFuture(Future):
    """A ``Future`` whose release is batched: dropping many refs wakes the client's loop once.

    ``Future.release`` (run when a future is garbage collected, usually in the user's thread)
    schedules one callback on the client's loop per future, and each such call from another
    thread writes to the loop's wake-up pipe: ~20 us per ref, 0.1 s for a generator's 5,000
    refs. Here the keys queue up and one callback releases them all, in order.
    """

    __slots__ = ()

    def release(self) -> None:
        client = self.client
        if self._cleared or client is None or client.generation != self._generation:
            return
        self._cleared = True
        with _release_lock:
            queue = _release_queues.setdefault(id(client), (client, []))[1]
            queue.append(self.key)
            first = len(queue) == 1
        if first:
            try:
                client.loop.add_callback(_release_queued, id(client))
            except (TypeError, RuntimeError, AttributeError):  # the client is shutting down
                with _release_lock:
                    _release_queues.pop(id(client), None)  # nothing left to release them to


_release_lock = threading.Lock()
_release_queues: dict[int, tuple[Client, list[Key]]] = {}


def _release_queued(client_id: int) -> None:
    """On the client's loop: ``Client._dec_ref`` for each queued key, with one message for all
    the keys released (Dask sends one per key, and the scheduler runs one transition each)."""
    with _release_lock:
        client, keys = _release_queues.pop(client_id, (None, []))
    if client is None:
        return
    released = []
    with client._refcount_lock:
        refcount = client.refcount
        for key in keys:
            left = refcount[key] - 1
            if left > 0:
                refcount[key] = left
            else:
                del refcount[key]
                released.append(key)
    futures = client.futures
    for key in released:
        state = futures.pop(key, None)
        if state is not None:
            state.cancel()  # as Client._release_key does
    if released and client.status != "closed":
        _release_route(client, released)


def _release_by_dask(client: Client, keys: list[Key]) -> None:
    client._send_to_scheduler({"op": "client-releases-keys", "keys": keys, "client": client.id})


# Who tells whom the released keys: Dask's own message by default; daskgen routes them (its
# plugin frees them in bulk, results of direct actor calls go to their worker).
_release_route: Callable[[Client, list[Key]], None] = _release_by_dask


def route_releases(route: Callable[[Client, list[Key]], None]) -> None:
    """Send the keys light futures release through ``route`` (see ``_objects.promotion``)."""
    global _release_route
    _release_route = route


_DONE = frozenset(("finished", "error", "cancelled"))


class _NoWaiter:
    """The event a :class:`LazyEventState` sets or clears while nobody waits: nothing."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


_NO_WAITER = _NoWaiter()


class LazyEventState(FutureState):
    """A ``FutureState`` (shared by a client's futures of one key) whose ``asyncio.Event``
    exists only once something waits on it.

    Dask's makes its event at the first change of status (``finish``, ``cancel``): ~860 bytes,
    760 of them the event's deque of waiters, which glibc allocates on the client's loop
    thread. A yield's future is finished the moment its announcement arrives and is rarely
    awaited (its value came inline), so a driver made and dropped ~86 MB of events per
    100,000-yield round, as many at once as refs were waiting to be taken or released, and its
    RSS kept creeping after each such peak (docs/performance.md, "Long-running drivers").
    Here the status alone says whether the future is done (Dask keeps the two in step); the
    event is made, set or not to match, when ``wait`` first needs one.
    """

    __slots__ = ()

    def _get_event(self) -> Any:
        # Dask's setters call ``self._get_event().set()``/``.clear()`` after the status change.
        event = self._event
        return _NO_WAITER if event is None else event

    def done(self) -> bool:
        return self.status in _DONE

    async def wait(self, timeout: float | None = None) -> None:
        if self._event is None:
            event = asyncio.Event()
            if self.status in _DONE:
                event.set()
            self._event = event  # type: ignore[assignment]  # Dask annotates it as None
        await super().wait(timeout)


def _lazy_event(future: Future) -> Future:
    state = future._state
    if type(state) is FutureState:
        state.__class__ = LazyEventState  # the same slots: only the methods change
    return future


def light_future(key: Key, client: Client) -> Future:
    """A new future of ``key`` held by ``client`` (see :class:`LightFuture`), whose state makes
    no event until something waits (see :class:`LazyEventState`)."""
    return _lazy_event(LightFuture(key, client))


def lighten(future: Future) -> Future:
    """Make a future that Dask created (``Client.submit``) release like a :class:`LightFuture`
    and wait like one (:class:`LazyEventState`)."""
    if type(future) is Future:
        future.__class__ = LightFuture
    return _lazy_event(future)


def client_add_stream_handler(
    client: Client, op: str, handler: Callable[..., Any], yield_after: bool = False
) -> None:
    """Handle messages with ``op`` that the scheduler sends on the client's batched stream.

    ``yield_after``: after each such message, let the client's event loop run what is ready.
    Dask's report loop (``Client._handle_report``) handles message after message without
    returning to the event loop for as long as its socket has data (tornado completes such a
    read at once): a driver taking in yields faster than it could handle them starved its loop
    for 0.4-0.8 s at a time, holding back the releases of refs it had dropped meanwhile (up to
    63,000 keys in one message) while the scheduler and the producing worker kept every one of
    those keys. Dask awaits what a handler returns, so the handler returns one loop turn.
    """
    if yield_after:
        handler = _then_a_loop_turn(handler)
    client._stream_handlers[op] = handler


class _LoopTurn:
    """Awaited, lets the event loop run everything ready once, as ``asyncio.sleep(0)`` does;
    unlike a coroutine, it may also be dropped unawaited (a direct delivery, below)."""

    __slots__ = ()

    def __await__(self) -> Any:
        yield  # a bare yield: the awaiting task resumes on the loop's next turn


_LOOP_TURN = _LoopTurn()


def _then_a_loop_turn(handler: Callable[..., Any]) -> Callable[..., Any]:
    def handle(**msg: Any) -> _LoopTurn:
        handler(**msg)
        return _LOOP_TURN

    return handle


def client_stream_handler(client: Client, op: str) -> Callable[..., Any]:
    return client._stream_handlers[op]


def key_status(client: Client, key: Key) -> str | None:
    state = client.futures.get(key)
    return None if state is None else state.status


def key_finish(client: Client, key: Key) -> None:
    """Mark this client's future of ``key`` finished (on the client's loop): the key is in
    memory in the cluster, as the scheduler's ``key-in-memory`` report would say."""
    state = client.futures.get(key)
    if state is not None and state.status != "finished":
        state.finish()


def key_lose(client: Client, key: Key) -> None:
    """Mark this client's future of ``key`` as lost: pending again until the key comes back."""
    state = client.futures.get(key)
    if state is not None:
        state.lose()


def client_send(client: Client, msg: dict[str, Any]) -> None:
    """Queue ``msg`` (daskgen's) on the client's batched stream to the scheduler
    (thread-safe)."""
    client._send_to_scheduler(msg)
    shrink_once_logged(client.scheduler_comm, msg)


def client_release(client: Client, keys: list[Key]) -> None:
    """Drop this client's claim on ``keys`` it never wrapped in a Future."""
    if client.status in ("running", "connecting", "newly-created"):
        client._send_to_scheduler({"op": "client-releases-keys", "keys": keys, "client": client.id})


def client_refcount(client: Client, key: Key) -> int:
    """How many live Futures of this client point at ``key``."""
    return client.refcount.get(key, 0)


def submit_prebound(
    client: Client,
    key: Key,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    resources: dict[str, float] | None,
    retries: int,
    workers: list[str] | None = None,
) -> dict[Key, Future]:
    """``client.submit`` for a key this client already holds a ``Future`` of.

    ``Client.submit`` returns the existing future instead of submitting when the key is known,
    but a task that waited for a yield (``_client.remote_function``) had to hand out its ref first.
    This is the body of ``Client.submit`` without that check.
    """
    from dask._expr import LLGExpr
    from dask._task_spec import Task, parse_input
    from distributed.spans import SpanMetadata

    expr = LLGExpr(
        {key: Task(key, func, *(parse_input(a) for a in args))}, _determ_token=key_token(key)
    )
    futures = client._graph_to_futures(
        expr,
        [key],
        internal_priority={key: 0},
        resources=resources,
        retries=retries,
        workers=workers,
        allow_other_workers=False if workers else None,
        span_metadata=SpanMetadata(collections=[{"type": "Future"}]),
    )
    return {k: lighten(f) for k, f in futures.items()}


def submitting_task() -> Key | None:
    """The task running in this thread, if any: what ``Client._graph_to_futures`` sends as
    ``submitting_task`` (read in the submitting thread)."""
    from distributed.worker import thread_state

    return getattr(thread_state, "key", None)


def update_graph_message(
    tasks: list[tuple[Key, Callable[..., Any], tuple[Any, ...]]],
    annotations: dict[str, Any],
    submitting: Key | None = None,
) -> dict[str, Any]:
    """The ``update-graph`` message that ``Client.submit`` sends for one task, for several
    tasks at once (``_client.batching``): ``annotations`` as ``_graph_to_futures`` merges them
    (``dask.get_annotations()``, then resources and retries), the tasks in submission order,
    Dask's 100 ms FIFO window, no actors. Serialising raises what ``Client.submit`` raises."""
    from dask._expr import LLGExpr
    from dask._task_spec import Task, parse_input
    from distributed.protocol.serialize import ToPickle, serialize, to_serialize
    from distributed.spans import SpanMetadata

    expr = LLGExpr(
        {key: Task(key, func, *(parse_input(a) for a in args)) for key, func, args in tasks},
        _determ_token=key_token(tasks[0][0]),
    )
    keys = [key for key, _, _ in tasks]
    return {
        "op": "update-graph",
        "expr_ser": Serialized(*serialize(to_serialize(expr), on_error="raise")),
        "keys": set(keys),
        "internal_priority": {key: i for i, key in enumerate(keys)},
        "submitting_task": submitting,
        "fifo_timeout": "100 ms",
        "actors": False,
        "code": ToPickle(()),
        "annotations": ToPickle(annotations),
        "span_metadata": ToPickle(SpanMetadata(collections=[{"type": "Future"}])),
    }


def client_send_now(client: Client, msg: dict[str, Any]) -> None:
    """On the client's loop: put ``msg`` on the scheduler stream now, behind what is queued
    there already (``Client._send_to_scheduler`` would queue it behind the loop's callbacks,
    after messages the user's thread sent since)."""
    client._send_to_scheduler_safe(msg)


def on_client_loop(client: Client, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on the client's event loop (where future states may be changed)."""
    _loop(client).add_callback(fn, *args)


def client_loop_call_later(
    client: Client, delay: float, fn: Callable[..., Any], *args: Any
) -> None:
    """Run ``fn(*args)`` on the client's event loop after ``delay`` s (from any thread)."""
    loop = _loop(client)
    loop.add_callback(loop.call_later, delay, fn, *args)


def on_loop_thread(client: Client) -> bool:
    """Whether this thread runs the client's event loop (where waiting for it deadlocks)."""
    return on_loop_of(client.loop)


def on_loop_of(loop: Any) -> bool:
    """Whether this thread runs ``loop`` (a Tornado loop of Dask's, as ``Worker.loop``)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return False
    return getattr(loop, "asyncio_loop", None) is running


def key_token(key: Key) -> str:
    return str(key).rpartition("-")[2]


def erred_future(client: Client, key: Key, error: BaseException) -> Future:
    """A future of this client only, already failed with ``error`` (a key the cluster never
    sees: the ref that reports why a stream ended)."""
    future = light_future(key, client)
    _loop(client).add_callback(key_set_error, client, key, error)
    return future


def key_set_error(
    client: Client, key: Key, error: BaseException, even_if_done: bool = False
) -> None:
    """Fail this client's futures of ``key``, a key that will never exist (or come back): its
    producer died before publishing it, or it was lost for good. Runs on the client's loop;
    no-op when nobody here holds the key, or when it has its value (unless ``even_if_done``:
    Dask just said the value is gone)."""
    state = client.futures.get(key)
    if state is not None and (even_if_done or state.status in ("pending", "lost")):
        state.set_error(error, error.__traceback__)


def future_exception(future: Future) -> BaseException | None:
    """Why ``future`` ended badly (its error, or the cancellation with Dask's reason)."""
    state = future._state
    return None if state is None else state.exception


def on_future_done(
    client: Client, future: Future, callback: Callable[..., Any], *args: Any
) -> None:
    """Call ``callback(*args)`` on the client's loop when ``future`` ends, without keeping the
    future alive (``Future.add_done_callback`` holds it, so a dropped generator's task would
    never be released)."""
    state = future._state
    assert state is not None

    async def _watch() -> None:
        await state.wait()
        callback(*args)

    _loop(client).add_callback(_watch)


async def future_wait(future: Future) -> None:
    """Wait, on the client's loop, until ``future`` is finished, erred or cancelled (no fetch)."""
    state = future._state
    assert state is not None
    await state.wait()


def key_ref(key: Key) -> Any:
    """A reference to ``key`` for a task's arguments or a graph (Dask's ``TaskRef``, which
    ``Future`` subclasses): the task depends on the key, without holding a future of it.

    Why not the future: where the scheduler runs in this process (daskgen's embedded cluster),
    a graph reaches it unpickled, so a future in a task is held by the scheduler's task state
    and by its log of its last 1,000 messages to each worker, and the value with it, long after
    the caller let go of every ref."""
    from dask._task_spec import TaskRef

    return TaskRef(key)


def alias_target(node: Any) -> Key | None:
    """The key that ``node``, a value in a collection's graph, only stands for: a future's, or
    an ``Alias``'s target (a persisted ``dask.dataframe`` collection's graph renames each
    partition's key to its future's key this way); None for anything else."""
    from dask._task_spec import Alias

    if isinstance(node, Future):
        return node.key
    if isinstance(node, Alias):
        return node.target
    return None


# --------------------------------------------------------------------------------------- worker


def worker_add_stream_handler(worker: Worker, op: str, handler: Callable[..., Any]) -> None:
    """Handle messages with ``op`` that the scheduler sends on the worker's batched stream."""
    worker.stream_handlers[op] = handler


def worker_store(worker: Worker, data: dict[Key, object]) -> dict[Key, int]:
    """Put ``data`` in the worker's memory under its keys, in place: no copy, no pickling.

    Runs on the worker's event loop. Keys the worker already holds are skipped (a re-run of a
    generator on the same worker: the first attempt's value stays, so no index mixes attempts).
    Keys it has never seen go straight to ``memory`` (:func:`_store_fresh`); any other key goes
    through the worker's state machine as scattered data (``update_data``). Neither sends
    anything to the scheduler (the publish message does). Returns the sizes Dask measured.
    """
    tasks = worker.state.tasks
    fresh: dict[Key, object] = {}
    known: dict[Key, object] = {}
    for key, value in data.items():
        ts = tasks.get(key)
        if ts is None:
            fresh[key] = value
        elif ts.state != "memory":
            known[key] = value
    sizes = _store_fresh(worker, fresh) if fresh else {}
    if known:
        result = worker.update_data(data=known, stimulus_id=f"daskgen-publish-{time()}")
        sizes.update((k, int(n)) for k, n in result["nbytes"].items())
    return sizes


def _store_fresh(worker: Worker, data: dict[Key, object]) -> dict[Key, int]:
    """What ``update_data`` does for keys the worker has never seen, without its machinery.

    The state machine costs ~22 us per key (a stimulus, a recommendation, a transition and a
    log entry each, the spill buffer's metrics and error handling around every insert); a
    generator publishes thousands of small values. For a key with no ``TaskState`` the result
    is the same: a ``TaskState`` in ``memory``, the value in ``data``, the worker's byte count,
    task counter, transition log and plugins updated. No task on this worker can be waiting for
    a key the worker has never seen, so there are no dependents to wake.
    """
    state = worker.state
    tasks, store, log = state.tasks, state.data, state.log
    spill = store if isinstance(store, SpillBuffer) else None
    notify = any(hasattr(p, "transition") for p in state.plugins.values())
    previous: dict[Any, Any] = {}
    sizes: dict[Key, int] = {}
    spilling: dict[Key, object] = {}
    now = time()
    for key, value in data.items():
        nbytes = sizeof(value)
        if spill is not None:
            fast = spill.fast
            if fast.total_weight + fast.offset + nbytes > fast.n:
                # It would make the buffer spill (which can fail): Dask's own path handles it.
                spilling[key] = value
                continue
        ts = TaskState(key)
        tasks[key] = ts
        state.task_counter.new_task(ts)
        previous[ts] = "released"
        if spill is None:
            store[key] = value
        else:
            # Fits in memory: evicts nothing, so nothing can fail; and a key the worker never
            # saw is not on disk (``Buffer.__setitem__`` would look, at ~5 us a key).
            spill.fast[key] = value
        ts.state = "memory"
        ts.nbytes = sizes[key] = nbytes
        ts.type = type(value)
        state.nbytes += nbytes
        log.append((key, "receive-from-scatter", "released", "daskgen-publish", now))
        if notify:
            state._notify_plugins("transition", key, "released", "memory")
    state.task_counter.transitions(previous)
    if spilling:
        result = worker.update_data(data=spilling, stimulus_id=f"daskgen-publish-{now}")
        sizes.update((k, int(n)) for k, n in result["nbytes"].items())
    return sizes


def worker_store_computed(
    worker: Worker, key: Key, value: object, start: float, stop: float
) -> bool:
    """Put the value of task ``key``, computed here outside Dask (a direct call, see
    ``_worker.direct``), in memory before its ``compute-task`` comes: Dask then answers it at
    once with ``task-finished`` (no run), and that report carries the run's start and stop
    (the task stream shows when the call really ran). False if the worker knows the key
    already (its ``compute-task`` came first: the task takes the value when it runs)."""
    if key in worker.state.tasks:
        return False
    store = worker.state.data
    if isinstance(store, SpillBuffer):
        fast = store.fast
        if fast.total_weight + fast.offset + sizeof(value) > fast.n:
            return False  # it would spill: the task takes it when it runs, through Dask's path
    _store_fresh(worker, {key: value})
    worker.state.tasks[key].startstops.append({"action": "compute", "start": start, "stop": stop})
    return True


def worker_key_asked(worker: Worker, key: Key) -> bool | None:
    """Whether the scheduler has asked this worker to compute ``key`` (None: not held here)."""
    from distributed.worker_state_machine import RUN_ID_SENTINEL

    ts = worker.state.tasks.get(key)
    return None if ts is None else ts.run_id != RUN_ID_SENTINEL


def worker_overwrite(worker: Worker, keys: list[Key], value: object) -> None:
    """Replace the values this worker holds for ``keys`` (published yields turned into errors).

    Runs on the worker's loop, after the publishes queued before it. Copies that other workers
    already fetched keep the old value.
    """
    for key in keys:
        if key in worker.data:
            worker.data[key] = value


def worker_send(worker: Worker, msg: dict[str, Any]) -> None:
    """Queue ``msg`` (daskgen's) on the worker's ordered batched stream to the scheduler."""
    worker.batched_stream.send(msg)
    shrink_once_logged(worker.batched_stream, msg)


def on_a_workers_loop() -> bool:
    """Whether this thread runs the event loop of a Dask worker of this process."""
    return any(on_loop_of(worker.loop) for worker in list(Worker._instances))


def worker_current_key(worker: Worker) -> Key | None:
    """The task this thread runs for the worker's pool, or None in any other thread (an actor's
    own threads), where ``secede`` would fail."""
    return worker.active_threads.get(threading.get_ident())


def worker_task_alive(worker: Worker, key: Key) -> bool:
    """False once the scheduler has released the task ``key`` on this worker (cancel, caller gone).

    ``Future.cancel`` cannot stop a running thread: a generator asks this at every yield.
    """
    ts = worker.state.tasks.get(key)
    return ts is not None and ts.state in ("executing", "long-running")


def worker_started(keys: list[Key], dask_worker: Worker) -> list[bool]:
    """Run on a worker (``scheduler_run_on_worker``): which of ``keys`` it has started (the
    others are only assigned to it, waiting for a thread)."""
    return [worker_task_alive(dask_worker, key) for key in keys]


def worker_lend_resources(worker: Worker, key: Key, sign: int) -> None:
    """Give back (sign=+1) or take again (sign=-1) the resources of running task ``key``.

    A task blocked in ``get`` must free its CPU like Ray does, or nested gets deeper than the
    cluster's CPU count deadlock. Dask keeps resources held across ``secede``; this adjusts the
    worker's free resources around the blocking call. Runs on the worker's event loop, queued
    before ``secede`` so the freed slot is seen when the worker looks for the next task.
    """
    ts = worker.state.tasks.get(key)
    if ts is None or not ts.resource_restrictions:
        return
    for name, amount in ts.resource_restrictions.items():
        worker.state.available_resources[name] += sign * amount
    if sign > 0 and ts.state == "long-running" and worker.state.running:
        # A task's second wait: Dask's secede of a task already long-running changes nothing,
        # so nothing would look at the tasks queued for the resources just lent back (a
        # ``wait`` loop in a task hung for ever, its children queued on its idle worker).
        # ``UnpauseEvent`` on a running worker does only that look (``_ensure_computing``).
        from distributed.worker_state_machine import UnpauseEvent

        worker.handle_stimulus(UnpauseEvent(stimulus_id=f"daskgen-lend-{time()}"))


def worker_take_slot(
    worker: Worker, ignore: Callable[[Key], bool] | None = None, even_if_busy: bool = False
) -> bool:
    """On the worker's loop: take one of the worker's task slots for a call daskgen runs in a
    thread of its own (``_worker.direct``), if one is free and no task waits for one (those
    come first). While taken, Dask's state machine counts one thread fewer, so it starts no
    task in that slot; the scheduler's view of the worker is unchanged.

    ``ignore(key)``: tasks that do not count (they end at once: the Dask tasks of direct calls
    already run). ``even_if_busy``: take it back after a wait that lent it (the worker may run
    one task too many for a moment, as after Dask's ``rejoin``)."""
    state = worker.state
    if even_if_busy:
        state.nthreads -= 1
        return True
    if not state.running:
        return False
    skip = ignore or (lambda key: False)
    if any(not skip(ts.key) for ts in state.ready) or any(
        not skip(ts.key) for ts in state.constrained
    ):
        return False
    if sum(1 for ts in state.executing if not skip(ts.key)) >= state.nthreads:
        return False
    state.nthreads -= 1
    return True


def worker_return_slot(worker: Worker) -> None:
    """On the worker's loop: give back a slot :func:`worker_take_slot` took, and let the worker
    start the task waiting for it, if any (``UnpauseEvent`` on a running worker does only that
    look, ``_ensure_computing``)."""
    from distributed.worker_state_machine import UnpauseEvent

    worker.state.nthreads += 1
    if worker.state.running and (worker.state.ready or worker.state.constrained):
        worker.handle_stimulus(UnpauseEvent(stimulus_id=f"daskgen-slot-{time()}"))


def worker_slots_short(worker: Worker, ignore: Callable[[Key], bool]) -> int:
    """How many more tasks on this worker wait to run (ready, or waiting for resources) than
    it has free slots (0 or less: none waits for want of a slot), not counting the tasks
    ``ignore(key)`` says do not count."""
    state = worker.state
    waiting = sum(1 for ts in state.ready if not ignore(ts.key))
    waiting += sum(1 for ts in state.constrained if not ignore(ts.key))
    busy = sum(1 for ts in state.executing if not ignore(ts.key))
    return waiting - max(state.nthreads - busy, 0)


def worker_refuse_steals(worker: Worker, refuse: Callable[[Key], bool]) -> None:
    """Dask's work stealing asks a worker to give up a task it has not started (its
    ``steal-request``), and runs it on another worker if it does. For the tasks ``refuse(key)``
    holds, this worker answers as for a task it is running: the scheduler leaves the task here.
    Other tasks go to Dask's handler as before. Set once per worker (later calls keep the
    first ``refuse``)."""
    handlers = worker.stream_handlers
    original = handlers["steal-request"]
    if getattr(original, "daskgen_refuse", None) is not None:
        return

    def steal_request(key: Any, stimulus_id: str, **kwargs: Any) -> Any:
        if refuse(tuple(key) if isinstance(key, list) else key):
            worker.batched_stream.send(
                {
                    "op": "steal-response",
                    "key": key,
                    "state": "executing",
                    "stimulus_id": stimulus_id,
                }
            )
            return None
        return original(key=key, stimulus_id=stimulus_id, **kwargs)

    steal_request.daskgen_refuse = refuse  # type: ignore[attr-defined]
    handlers["steal-request"] = steal_request


def worker_on_task_waiting(worker: Worker, name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` each time a task on this worker becomes ready to run (Dask's
    ``ready`` or ``constrained`` state), from inside the worker's state machine: it may only
    look and schedule work on the loop. Installed once, under ``name``, among this worker's
    plugins (Dask's ``WorkerState.plugins``, which gets each transition): in this process
    only, unknown to the scheduler and other workers, until :func:`worker_stop_watching`."""
    if name in worker.plugins:
        return

    class _Watch(WorkerPlugin):
        def transition(self, key: Key, start: str, finish: str, **kwargs: Any) -> None:
            if finish in ("ready", "constrained"):
                callback()

    worker.plugins[name] = _Watch()


def worker_stop_watching(worker: Worker, name: str) -> None:
    """Remove what :func:`worker_on_task_waiting` installed under ``name`` (on the loop, not
    from inside a transition): the worker's plugins are as before."""
    worker.plugins.pop(name, None)


@contextlib.contextmanager
def as_worker_thread(worker: Worker) -> Iterator[None]:
    """In a thread of daskgen's own on a worker: ``distributed.get_worker()`` (and so
    ``get_client()``) answer ``worker``, as in a task Dask runs."""
    from distributed.worker import _worker_cvar

    token = _worker_cvar.set(worker)
    try:
        yield
    finally:
        _worker_cvar.reset(token)


def worker_detach_thread(worker: Worker, key: Key, ident: int) -> bool:
    """Take thread ``ident``, which runs task ``key``, out of the worker's pool now, as
    ``secede()`` does from inside: a new thread takes its place, the task stops counting
    against the worker's threads, and its resources are lent back (``worker_lend_resources``;
    the thread gives them back as it ends). False if the thread had seceded already (it waits
    in a ``get``: its slot is free).
    """
    from distributed.threadpoolexecutor import threads_lock
    from distributed.worker_state_machine import SecedeEvent

    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    executor: Any = worker.executors.get("default")
    if thread is None or executor is None:
        return False
    with threads_lock:
        if thread not in executor._threads:
            return False
        executor._threads.remove(thread)
        executor._adjust_thread_count()
    # Its resources first: the stimulus makes the worker look for the next task at once.
    worker_lend_resources(worker, key, +1)
    ts = worker.state.tasks.get(key)
    if ts is not None and (
        ts.state == "executing" or (ts.state == "cancelled" and ts.previous == "executing")
    ):
        worker.handle_stimulus(
            SecedeEvent(key=key, compute_duration=0.0, stimulus_id=f"daskgen-cancel-{time()}")
        )
    return True


def worker_thread_leaves_pool() -> None:
    """In a thread :func:`worker_detach_thread` took out of the pool: end once this task
    returns (a seceded thread would otherwise go on taking work)."""
    from distributed.threadpoolexecutor import thread_state

    if hasattr(thread_state, "proceed"):
        thread_state.proceed = False


def worker_client(worker: Worker) -> Client:
    """The worker's own client, from any thread of the worker process."""
    return worker._get_client()


def worker_total_resources(worker: Worker) -> dict[str, float]:
    """What this worker declares (``--resources``)."""
    return dict(worker.state.total_resources)


def worker_is_closing(worker: Worker) -> bool:
    """Whether the worker is shutting down (it will not drain its queues any more)."""
    return worker.status.name in ("closing", "closing_gracefully", "closed", "failed")


def worker_current_resources(worker: Worker, key: Key) -> dict[str, float]:
    ts = worker.state.tasks.get(key)
    return dict(ts.resource_restrictions or {}) if ts is not None else {}


# ------------------------------------------------------------------------------------ scheduler


def scheduler_add_stream_handler(
    scheduler: Scheduler, op: str, handler: Callable[..., Any]
) -> None:
    """Handle ``op`` on workers' and clients' batched streams (one table serves both)."""
    scheduler.stream_handlers[op] = handler


def scheduler_stream_handler(scheduler: Scheduler, op: str) -> Callable[..., Any]:
    """The handler the scheduler calls for ``op`` on a batched stream."""
    return scheduler.stream_handlers[op]


def scheduler_has_worker(scheduler: Scheduler, worker: str) -> bool:
    """Whether ``worker`` is registered (Dask stops reading a removed worker's stream)."""
    return worker in scheduler.workers


def scheduler_add_handler(scheduler: Scheduler, op: str, handler: Callable[..., Any]) -> None:
    """Answer requests ``op`` (``await client.scheduler.<op>(...)``), as extensions do."""
    scheduler.handlers[op] = handler


def scheduler_clients(scheduler: Scheduler) -> list[str]:
    return list(scheduler.client_comms)


def scheduler_has_client(scheduler: Scheduler, client: str) -> bool:
    return client in scheduler.client_comms


def worker_forget_directly(worker: Worker) -> None:
    """Let this worker forget plain in-memory keys the scheduler frees without its state machine.

    The scheduler frees keys one ``free-keys`` message each; through the state machine every one
    costs a stimulus and two transitions (~12 us), and then one ``release-worker-data`` message
    back, which the scheduler, having forgotten the key already, ignores. A generator's
    thousands of yields freed at once kept the worker busy into the next round. A key in memory
    with no dependencies, no dependents, no other holder and no actor is forgotten here the way
    ``_transition_released_forgotten`` does it (``_purge_state``, byte count, task counter, log,
    plugins); any other key takes Dask's own path.
    """
    original = worker.stream_handlers["free-keys"]
    if getattr(original, "daskgen_original", None) is not None:
        return

    def free_keys(keys: Iterable[Key] = (), stimulus_id: str = "", **kwargs: Any) -> None:
        rest = _forget_plain(worker, keys, stimulus_id)
        if rest:
            original(keys=rest, stimulus_id=stimulus_id, **kwargs)

    free_keys.daskgen_original = original  # type: ignore[attr-defined]
    worker.stream_handlers["free-keys"] = free_keys


async def worker_ask_scheduler(worker: Worker, op: str) -> Any:
    """The answer of the worker's scheduler to request ``op`` (None if it has no such
    handler: it then logs a warning and answers None, and the connection lives on)."""
    return await getattr(worker.scheduler, op)()


def worker_forget(worker: Worker, keys: Iterable[Key]) -> None:
    """Drop values this worker holds that the scheduler never knew of (results of direct
    actor calls nobody promoted), as the scheduler's ``free-keys`` would."""
    rest = _forget_plain(worker, keys, f"daskgen-forget-{time()}")
    if rest:
        worker.handle_stimulus(
            FreeKeysEvent(
                keys=[k for k in rest if k in worker.state.tasks],
                stimulus_id=f"daskgen-forget-{time()}",
            )
        )


def _forget_plain(worker: Worker, keys: Iterable[Key], stimulus_id: str) -> list[Key]:
    """Forget the plain in-memory ``keys`` as ``_transition_released_forgotten`` does; return
    the others (for Dask's own path)."""
    state = worker.state
    rest = []
    forgotten: dict[Any, Any] = {}
    notify = any(hasattr(p, "transition") for p in state.plugins.values())
    now = time()
    for key in keys:
        key = as_key(key)
        ts = state.tasks.get(key)
        if (
            ts is None
            or ts.state != "memory"
            or ts.dependents
            or ts.dependencies
            or ts.who_has
            or key in state.actors
        ):
            rest.append(key)
            continue
        state.nbytes -= ts.nbytes or 0
        state._purge_state(ts)
        ts.state = "forgotten"
        del state.tasks[key]
        forgotten[ts] = "memory"
        state.log.append((key, "memory", "forgotten", "forgotten", {}, stimulus_id, now))
        if notify:
            state._notify_plugins("transition", key, "memory", "released")
            state._notify_plugins("transition", key, "released", "forgotten")
    if forgotten:
        state.task_counter.transitions(forgotten)
    return rest


def worker_add_handler(worker: Worker, op: str, handler: Callable[..., Any]) -> None:
    """Answer connections that open with ``op`` (a handler whose first argument is ``comm``
    keeps the connection, as the scheduler's ``add_client`` does)."""
    worker.handlers[op] = handler


def worker_has_handler(worker: Worker, op: str) -> bool:
    return op in worker.handlers


async def worker_fetch(worker: Worker, keys: list[Key]) -> tuple[dict[Key, object], list[Key]]:
    """The values of ``keys``: from this worker's memory (the very objects, no copy) or
    fetched from the workers holding them (``who_has`` from the scheduler, then
    ``gather_from_workers``, as the client's direct gather does). Returns (values, missing)."""
    from distributed.utils_comm import gather_from_workers

    out: dict[Key, object] = {}
    remote = []
    for key in keys:
        ts = worker.state.tasks.get(key)
        if ts is not None and ts.state == "memory" and key in worker.data:
            out[key] = worker.data[key]
        else:
            remote.append(key)
    if not remote:
        return out, []
    who_has = await worker.scheduler.who_has(keys=remote)
    located = {k: v for k, v in who_has.items() if v}
    missing = [k for k in remote if not who_has.get(k)]
    if located:
        data, lost, _, _ = await gather_from_workers(located, rpc=worker.rpc, who=worker.address)
        out.update(data)
        missing += list(lost)
    return out, missing


def scheduler_send_to_client(
    scheduler: Scheduler, client: str, msg: dict[str, Any], direct: bool = False
) -> None:
    """Queue ``msg`` on the client's stream; or, if ``direct`` and the client lives in this
    process with nothing queued for it, run its handler now (see :func:`_idle_local_client`)."""
    if direct:
        local = _idle_local_client(scheduler, client)
        handler = None if local is None else local._stream_handlers.get(msg["op"])
        if handler is not None:
            handler(**{k: v for k, v in msg.items() if k != "op"})
            return
    stream = scheduler.client_comms.get(client)
    if stream is None or stream.comm is None or stream.comm.closed():
        return  # the client is leaving: Dask would log its failure to write as CRITICAL
    scheduler.client_send(client, msg)
    shrink_once_logged(stream, msg)


def _idle_local_client(scheduler: Scheduler, client_id: str) -> Client | None:
    """The client ``client_id`` if it runs on this very event loop (daskgen's own driver with
    its embedded scheduler) and no message to it is queued or in flight.

    Dask's stream to such a client still goes through a batched send and an in-process queue,
    each a turn of the loop (~0.2 ms); a direct call skips them. Only when nothing is on the way:
    a message delivered directly must never overtake one sent before it.
    """
    stream = scheduler.client_comms.get(client_id)
    if stream is None or stream.buffer or stream.next_deadline is not None:
        return None  # something queued, or sent less than one batching interval ago
    for client in list(Client._instances):
        if client.id == client_id:
            break
    else:
        return None
    queue = getattr(getattr(client.scheduler_comm, "comm", None), "_read_q", None)
    if queue is None or queue._q or client.status != "running":
        return None  # not an inproc connection, or messages not read yet
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return client if getattr(client.loop, "asyncio_loop", None) is running else None


def scheduler_send_to_worker(scheduler: Scheduler, worker: str, msg: dict[str, Any]) -> None:
    scheduler.worker_send(worker, msg)
    shrink_once_logged(scheduler.stream_comms.get(worker), msg)


def scheduler_key_state(scheduler: Scheduler, key: Key) -> str | None:
    ts = scheduler.tasks.get(key)
    return None if ts is None else ts.state


def scheduler_key_nbytes(scheduler: Scheduler, key: Key) -> int:
    """The size Dask measured of ``key``'s value if it is in memory, else 0."""
    ts = scheduler.tasks.get(key)
    if ts is None or ts.state != "memory":
        return 0
    return max(ts.nbytes, 0)


def local_scheduler(client: Client) -> Scheduler | None:
    """The scheduler itself when it runs in this process (daskgen's embedded cluster)."""
    scheduler = getattr(getattr(client, "cluster", None), "scheduler", None)
    return scheduler if isinstance(scheduler, Scheduler) else None


def worker_value(worker: Worker, key: Key) -> object:
    """The value of ``key`` in this worker's memory (``KeyError`` if it holds none)."""
    ts = worker.state.tasks.get(key)
    if ts is None or ts.state != "memory":
        raise KeyError(key)
    return worker.data[key]


def scheduler_holders(scheduler: Scheduler, key: Key) -> set[str]:
    ts = scheduler.tasks.get(key)
    return {ws.address for ws in (ts.who_has or ())} if ts is not None else set()


def scheduler_processing_on(scheduler: Scheduler, key: Key) -> str | None:
    ts = scheduler.tasks.get(key)
    ws = ts.processing_on if ts is not None else None
    return ws.address if ws is not None else None


# Graphs of at most this many tasks are materialised on the scheduler's loop (see below).
SMALL_GRAPH = 16


def scheduler_materialize_small_graphs_inline(enable: bool) -> None:
    """In this process, let ``Scheduler.update_graph`` turn a small graph into tasks on its own
    event loop instead of in Dask's offload thread (``enable=False`` restores Dask's way).

    The offload keeps the loop responsive while a big graph materialises; for a one-task graph
    (every ``.remote()`` call) it is a round trip to another thread and back, per call, through
    one single-threaded pool: 2,000 tiny tasks submitted at once went 800 -> 1,250 tasks/s.
    Only graphs of at most :data:`SMALL_GRAPH` tasks given as a plain task mapping stay inline.
    """
    import distributed.scheduler as ds

    current = ds.offload
    original = getattr(current, "daskgen_original", None)
    if not enable:
        if original is not None:
            ds.offload = original
        return
    if original is not None:
        return  # already on

    async def offload(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if func is ds._materialize_graph and _is_small_graph(kwargs.get("expr")):
            return func(*args, **kwargs)
        return await current(func, *args, **kwargs)

    offload.daskgen_original = current  # type: ignore[attr-defined]
    ds.offload = offload


def _is_small_graph(expr: Any) -> bool:
    from dask._expr import LLGExpr

    return isinstance(expr, LLGExpr) and len(expr.operand("dsk")) <= SMALL_GRAPH


def scheduler_register_data(
    scheduler: Scheduler, nbytes: dict[Key, int], worker: str, client: str
) -> None:
    """Record that ``worker`` holds the fresh keys in ``nbytes``, wanted by ``client``.

    What ``Scheduler.update_data`` does (a key straight in memory, bypassing the transition
    engine: only for keys the scheduler does not know yet), minus its two ``key-in-memory``
    reports per key and address parsing: the caller's client learns of each key from daskgen's
    own message and marks its future done itself (``key_finish``). This is most of the cost of a
    small yield on the scheduler.
    """
    ws = scheduler.workers.get(worker)
    cs = scheduler.clients.get(client)
    if ws is None or cs is None:
        return
    for key, n in nbytes.items():
        ts = scheduler.new_task(key, None, "memory")
        ts.set_nbytes(n)
        scheduler.add_replica(ts, ws)
        if ts.who_wants is None:
            ts.who_wants = set()
        ts.who_wants.add(cs)
        cs.wants_what.add(ts)


def scheduler_allow_worker_failures(scheduler: Scheduler, key: Key, max_retries: int) -> None:
    """Let task ``key`` be re-run ``max_retries`` times (-1: always) after its worker dies.

    Dask counts, per task, the workers that died running it (``suspicious``) and fails the task
    with ``KilledWorker`` past the global ``allowed_failures``; the count starts offset here.
    """
    ts = scheduler.tasks.get(key)
    if ts is not None:
        allowed = scheduler.allowed_failures
        ts.suspicious = allowed - max_retries if max_retries >= 0 else -(10**9)


async def scheduler_run_on_worker(
    scheduler: Scheduler, worker: str, fn: Callable[..., Any], *args: Any
) -> Any:
    """``fn(*args, dask_worker=...)`` on ``worker``'s loop, as ``Client.run`` does (Dask's
    ``run`` message, through the scheduler's ``broadcast``); returns what it returned."""
    import cloudpickle

    msg = {"op": "run", "function": cloudpickle.dumps(fn), "args": cloudpickle.dumps(args)}
    replies = await scheduler.broadcast(msg=msg, workers=[worker])
    reply = replies[worker]
    if reply.get("status") != "OK":
        raise RuntimeError(f"running {fn.__name__} on {worker} failed: {reply}")
    result = reply["result"]
    # The worker wraps it (to_serialize); the scheduler does not unwrap it: still wrapped over
    # inproc, serialised over TCP.
    if isinstance(result, Serialize):
        result = result.data
    elif isinstance(result, Serialized):
        result = deserialize(result.header, result.frames)
    return result


def scheduler_cancel(scheduler: Scheduler, keys: list[Key], client: str, reason: str) -> None:
    """Dask's cancel with ``force`` (whoever holds the keys), for the keys someone wants
    (Dask's ``stimulus_cancel`` asserts that)."""
    wanted = [k for k in keys if (ts := scheduler.tasks.get(k)) is not None and ts.who_wants]
    if wanted:
        scheduler.stimulus_cancel(wanted, client, force=True, reason=reason, msg="")


def scheduler_call_later(
    scheduler: Scheduler, delay: float, fn: Callable[..., Any], *args: Any
) -> None:
    """On the scheduler's event loop: run ``fn(*args)`` there after ``delay`` s."""
    scheduler.loop.call_later(delay, fn, *args)


def scheduler_desire(scheduler: Scheduler, keys: list[Key], client: str) -> None:
    """Dask's ``client-desires-keys``: ``client`` wants the known ``keys`` (and is told at once
    about those already in memory or erred)."""
    scheduler.client_desires_keys(keys=keys, client=client)


def scheduler_report(scheduler: Scheduler, client: str, msg: dict[str, Any]) -> None:
    """Queue ``msg`` to one client (no-op if it is gone)."""
    scheduler.client_send(client, msg)


def scheduler_release(scheduler: Scheduler, keys: list[Key], client: str) -> None:
    """Dask's ``client-releases-keys`` for ``keys``, its messages to each worker merged: Dask
    frees each key with a ``free-keys`` message of its own, and every Dask stream keeps its last
    1,000 payloads for debugging, so a generator's 100,000 yields freed at once left 100,000
    messages in the scheduler's memory (and cost a message each to send)."""

    def send_merged(client_msgs: dict[str, list[Any]], worker_msgs: dict[str, list[Any]]) -> None:
        for worker, msgs in worker_msgs.items():
            frees = [m for m in msgs if m.get("op") == "free-keys"]
            if len(frees) > 1:
                merged = {**frees[0], "keys": [k for m in frees for k in m["keys"]]}
                first = msgs.index(frees[0])
                others = [m for m in msgs if m.get("op") != "free-keys"]
                worker_msgs[worker] = [*others[:first], merged, *others[first:]]
                shrink_once_logged(scheduler.stream_comms.get(worker), merged)
        Scheduler.send_all(scheduler, client_msgs, worker_msgs)

    scheduler.send_all = send_merged  # type: ignore[method-assign]
    try:
        scheduler.client_releases_keys(keys=keys, client=client)
    finally:
        del scheduler.send_all  # back to the class's own


def scheduler_fire_and_forget(scheduler: Scheduler, keys: list[Key]) -> None:
    """What ``distributed.fire_and_forget`` asks for, done on the scheduler: Dask's own
    ``fire-and-forget`` client wants ``keys`` until each has run (Dask then releases it)."""
    scheduler.client_desires_keys(keys=keys, client="fire-and-forget")


def scheduler_release_fire_and_forget_soon(scheduler: Scheduler, key: Key) -> None:
    """After the transition under way (never from inside one): Dask's fire-and-forget client
    stops wanting ``key`` if it still does, as Dask does when such a task finishes."""

    def release() -> None:
        ts = scheduler.tasks.get(key)
        cs = scheduler.clients.get("fire-and-forget")
        if ts is not None and cs is not None and ts in cs.wants_what:
            scheduler.client_releases_keys(keys=[key], client="fire-and-forget")

    scheduler.loop.add_callback(release)


# Per scheduler: workers held until daskgen knows what they can run -> the status to give them
# when released (the one they registered with, or the latest they asked for meanwhile).
_holds: weakref.WeakKeyDictionary[Scheduler, dict[str, str]] = weakref.WeakKeyDictionary()


def scheduler_hold_worker(scheduler: Scheduler, worker: str) -> bool:
    """Hold a joining worker paused in the scheduler's view (no task is placed on it, as on a
    worker short of memory) until :func:`scheduler_release_worker`. A worker registers before
    it runs and reports ``running`` on its stream just after: that report is held too (the
    scheduler's ``worker-status-change`` handler defers it). False if the worker is gone."""
    from distributed.core import Status

    ws = scheduler.workers.get(worker)
    if ws is None:
        return False
    holds = _holds.get(scheduler)
    if holds is None:
        holds = _holds[scheduler] = {}
        original = scheduler.stream_handlers["worker-status-change"]

        def status_change(status: str, worker: str, stimulus_id: str, **kwargs: Any) -> None:
            if worker in holds:
                holds[worker] = status  # applied when the worker is released
            else:
                original(status=status, worker=worker, stimulus_id=stimulus_id, **kwargs)

        scheduler.stream_handlers["worker-status-change"] = status_change
    holds[worker] = ws.status.name
    if ws.status == Status.running:
        scheduler.handle_worker_status_change(Status.paused, ws, f"daskgen-probe-{time()}")
    return True


def scheduler_release_worker(scheduler: Scheduler, worker: str) -> None:
    """Give a held worker the status it has asked for (unless it left)."""
    status = _holds.get(scheduler, {}).pop(worker, None)
    if status is not None and worker in scheduler.workers:
        scheduler.handle_worker_status_change(status, worker, f"daskgen-probed-{time()}")


def scheduler_forget_topic(scheduler: Scheduler, topic: str) -> None:
    """Drop an event topic and the events it keeps (Dask keeps every topic for ever)."""
    scheduler._broker._topics.pop(topic, None)


def scheduler_workers(scheduler: Scheduler) -> list[str]:
    return list(scheduler.workers)


def scheduler_key_restrictions(scheduler: Scheduler, key: Key) -> set[str]:
    """The workers the task ``key`` may run on (empty: any, or no such task)."""
    ts = scheduler.tasks.get(key)
    return set(ts.worker_restrictions or ()) if ts is not None else set()


def scheduler_worker_states(scheduler: Scheduler) -> list[dict[str, Any]]:
    """What the scheduler knows of each worker that actor placement and cluster introspection
    use: its resources (declared with ``dask worker --resources``, and in use), threads and
    tasks running or assigned there."""
    return [
        {
            "address": address,
            "host": ws.host,
            "nthreads": ws.nthreads,
            "memory_limit": ws.memory_limit or 0,
            "resources": dict(ws.resources),
            "used_resources": dict(ws.used_resources),
            "processing": len(ws.processing),
            "status": ws.status.name,
        }
        for address, ws in scheduler.workers.items()
    ]


def scheduler_restrict(
    scheduler: Scheduler, keys: list[Key], workers: list[str], *, replace: bool = False
) -> list[Key]:
    """Let the tasks ``keys`` run only on ``workers`` from now on, as ``Client.submit(workers=
    ...)`` restricts a task; a task already restricted keeps its allowed workers among
    ``workers`` (a loose restriction none of whose workers is in ``workers``: all of them).
    Returns the tasks none of whose allowed workers is in ``workers`` (left unchanged: they
    cannot run). A task waiting in the scheduler's queue (which holds only
    unrestricted tasks) or for a worker goes back through ``waiting``; a running task goes on
    where it is, and is placed by its new restrictions if its worker dies. With ``replace``,
    the tasks' own restrictions are replaced by ``workers`` (none is stuck)."""
    allowed = set(workers)
    stuck, again = [], []
    for key in keys:
        ts = scheduler.tasks.get(key)
        states = ("released", "waiting", "queued", "no-worker", "processing")
        if ts is None or ts.state not in states:
            continue
        current = None if replace else ts.worker_restrictions
        if current and not current & allowed:
            if not ts.loose_restrictions:
                stuck.append(key)
                continue
            current = None  # a loose restriction lets it run elsewhere

        ts.worker_restrictions = current & allowed if current else set(allowed)
        ts.loose_restrictions = False
        if ts.state in ("queued", "no-worker"):
            again.append(key)
    if again:
        stimulus = f"daskgen-restrict-{time()}"
        scheduler.transitions(dict.fromkeys(again, "released"), stimulus)
        scheduler.transitions(dict.fromkeys(again, "waiting"), stimulus)
    return stuck


# Not an address any worker can have: a task restricted to it waits in ``no-worker``.
_NOWHERE = "daskgen-placement-pending"


def scheduler_place(scheduler: Scheduler, keys: list[Key], workers: list[str] | None) -> None:
    """Set where the tasks ``keys`` may run, as ``Client.submit(workers=...,
    allow_other_workers=False)`` sets it, replacing their worker and host restrictions:
    ``workers`` (addresses); ``None``, anywhere; ``[]``, nowhere for now (the task waits in
    ``no-worker``, as a task restricted to a worker that left does). A task waiting for a
    worker goes back through ``waiting``; a running task goes on where it is."""
    again = []
    for key in keys:
        ts = scheduler.tasks.get(key)
        if ts is None or ts.state not in (
            "released",
            "waiting",
            "queued",
            "no-worker",
            "processing",
        ):
            continue
        if workers is None:
            ts.worker_restrictions = None
        else:
            ts.worker_restrictions = set(workers) if workers else {_NOWHERE}
        ts.host_restrictions = None
        ts.loose_restrictions = False
        if ts.state in ("queued", "no-worker"):
            again.append(key)
    if again:
        stimulus = f"daskgen-place-{time()}"
        scheduler.transitions(dict.fromkeys(again, "released"), stimulus)
        scheduler.transitions(dict.fromkeys(again, "waiting"), stimulus)


def scheduler_worker_nanny(scheduler: Scheduler, worker: str) -> str | None:
    """The address of ``worker``'s nanny (None: it runs without one, or is unknown)."""
    ws = scheduler.workers.get(worker)
    return ws.nanny if ws is not None else None


def scheduler_worker_memory_limit(scheduler: Scheduler, worker: str) -> int:
    """``worker``'s memory limit in bytes (0: none, or the worker is not registered)."""
    ws = scheduler.workers.get(worker)
    return int(ws.memory_limit or 0) if ws is not None else 0


async def scheduler_ping(scheduler: Scheduler, address: str, timeout: float) -> bool:
    """Whether the Dask server at ``address`` (a nanny, a worker) answers within ``timeout``
    seconds, over the scheduler's connection pool."""
    try:
        await asyncio.wait_for(scheduler.rpc(address).identity(), timeout)
    except Exception:
        return False
    return True


def scheduler_wanted_by(scheduler: Scheduler, keys: list[Key]) -> dict[str, list[Key]]:
    """Which real clients (not Dask's fire-and-forget) want which of ``keys``."""
    out: dict[str, list[Key]] = {}
    for key in keys:
        ts = scheduler.tasks.get(key)
        for cs in (ts.who_wants or ()) if ts is not None else ():
            if cs.client_key != "fire-and-forget":
                out.setdefault(cs.client_key, []).append(key)
    return out


def scheduler_free_on_worker(scheduler: Scheduler, worker: str, keys: Iterable[Key]) -> None:
    """Make ``worker`` drop keys the scheduler never registered (duplicates, orphans)."""
    scheduler_send_to_worker(
        scheduler, worker, {"op": "free-keys", "keys": list(keys), "stimulus_id": "daskgen-free"}
    )


# Tasks a worker was sent but cannot start yet, moved to a worker with a free thread. Dask
# places a resource-restricted task on a worker as it is submitted (its queue of tasks waiting
# for a free thread holds only unrestricted ones), by its estimate of when each worker is
# free; a worker then runs what it was sent in order. Dask's stealing moves waiting tasks by
# the same estimates, per task prefix: a long call among short ones of the same function is
# taken for short, and the tasks placed behind it wait for it while other workers idle.


def scheduler_free_threads(scheduler: Scheduler) -> dict[str, int]:
    """Running workers with a thread no task was sent for (tasks that seceded, Dask's
    ``long-running``, hold none), net of tasks being moved there: address -> how many."""
    stealing = scheduler.extensions.get("stealing")
    moving = getattr(stealing, "in_flight_tasks", {})
    free = {}
    for ws in scheduler.running:
        n = ws.nthreads - (len(ws.processing) - len(ws.long_running)) - max(moving.get(ws, 0), 0)
        if n > 0:
            free[ws.address] = n
    return free


def scheduler_waiting_behind(
    scheduler: Scheduler,
    limit: int,
    started: Callable[[Key, str], bool],
    arrival: Callable[[Key], Any],
) -> list[tuple[Key, str]]:
    """Tasks sent to a worker with more tasks than threads that it has not started yet, in the
    order it runs them (Dask's priority, then arrival: graphs sent within Dask's
    ``fifo-timeout`` share a priority, and ``arrival(key)`` orders them): up to ``limit`` per
    worker, as ``(key, worker)``, the workers with the most waiting first.
    ``started(key, worker)``: the task is known to run there (it refused to move); the others
    of a worker's first ``nthreads`` are taken to run. A task taken for waiting that started
    after all refuses to move (:func:`scheduler_move_task`)."""
    found = []
    for ws in scheduler.workers.values():
        extra = len(ws.processing) - len(ws.long_running) - ws.nthreads
        if extra <= 0:
            continue
        ready, running = [], 0
        for ts in ws.processing:
            if ts in ws.long_running:
                continue
            if started(ts.key, ws.address):
                running += 1
            else:
                ready.append(ts)
        skip = max(ws.nthreads - running, 0)
        first = heapq.nsmallest(
            skip + limit, ready, key=lambda ts: (ts.priority or (), arrival(ts.key))
        )[skip:]
        found.append((extra, [(ts.key, ws.address) for ts in first]))
    found.sort(key=lambda item: -item[0])
    return [pair for _, pairs in found for pair in pairs]


def scheduler_task_fits(scheduler: Scheduler, key: Key, worker: str, max_fetch: int) -> bool:
    """Whether the task ``key`` may move to ``worker``: it is processing elsewhere, not being
    moved already, restricted to no worker or host (or loosely: Dask's ``allow_other_workers``),
    ``worker`` has the resources it needs free (declared minus those of the tasks sent there),
    and the values of its dependencies that ``worker`` would fetch total at most ``max_fetch``
    bytes."""
    ts = scheduler.tasks.get(key)
    ws = scheduler.workers.get(worker)
    stealing = scheduler.extensions.get("stealing")
    if ts is None or ws is None or ts.state != "processing" or ts.processing_on is ws:
        return False
    if (ts.worker_restrictions or ts.host_restrictions) and not ts.loose_restrictions:
        return False
    if stealing is None or ts in stealing.in_flight:
        return False
    for resource, need in (ts.resource_restrictions or {}).items():
        if ws.resources.get(resource, 0) - ws.used_resources.get(resource, 0) < need:
            return False
    fetch = 0
    for dts in ts.dependencies:
        if dts not in ws.has_what:
            fetch += dts.get_nbytes()
            if fetch > max_fetch:
                return False
    return True


def scheduler_move_task(scheduler: Scheduler, key: Key, worker: str) -> bool:
    """Move the task ``key`` to ``worker`` through Dask's work stealing (its steal request:
    the worker holding the task gives it up unless it started it, and the scheduler then sends
    it to ``worker``). False if the scheduler has no stealing (``distributed.scheduler.
    work-stealing`` off) or the request was not sent."""
    stealing = scheduler.extensions.get("stealing")
    ts = scheduler.tasks.get(key)
    thief = scheduler.workers.get(worker)
    if stealing is None or ts is None or thief is None or ts.processing_on is None:
        return False
    sent = stealing.move_task_request(ts, ts.processing_on, thief)
    return sent.startswith("steal-")


# ------------------------------------------------------------- daskgen's messages in Dask's logs

# Every Dask stream (``BatchedSend``) keeps its last 1,000 payloads under 1 MB for debugging.
# daskgen's messages carry thousands of keys, yields and inline values: kept whole, a driver
# streaming 100,000-yield rounds grew ~17 MB a round (the scheduler and workers likewise), up to
# ~1 GB a stream. So once one of daskgen's messages has been written (it is in the log, no
# longer in the buffer), the log's entry is replaced by a copy in which daskgen's bulky fields
# are their length, as Dask writes "large-message" for a payload of 1 MB or more: the log still
# shows what was sent. The message itself is never changed: an in-process comm hands the very
# same objects to the receiver, which may not have read them yet.
_BULKY = ("items", "keys", "blob", "packed", "indexed")  # indexed: {name: [index, ...]}
_SHRINK_SWEEP_S = 0.5


def _bulk(value: Any) -> int:
    """How many items (or bytes) a bulky field carries; 0 if it is not one."""
    if isinstance(value, (list, tuple, bytes)):
        return len(value)
    if isinstance(value, dict):
        return sum(len(v) for v in value.values() if isinstance(v, (list, tuple)))
    return 0


def _shrunk(msg: dict[str, Any]) -> dict[str, Any]:
    out = dict(msg)
    for field in _BULKY:
        n = _bulk(out.get(field))
        if n > 16:
            out[field] = f"<{n} {field}: sent>"
    return out


class _Shrinker:
    """daskgen's messages sent on one stream whose log entry is not yet shrunk."""

    __slots__ = ("stream", "pending", "timer")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        # id(message) -> (message, batch count at send); the message is kept so its id is too
        self.pending: dict[int, tuple[dict[str, Any], int]] = {}
        self.timer = False

    def sweep(self) -> None:
        """Shrink the log's entries holding pending messages; look again soon for the rest."""
        self.timer = False
        stream = self.stream
        log = stream.recent_message_log
        if stream.comm is None or stream.comm.closed() or not self.pending:
            self.pending.clear()  # nothing more will be logged
            return
        since = min(b for _, b in self.pending.values())
        recent = min(len(log), stream.batch_count - since + 1)
        for i in range(len(log) - 1, len(log) - 1 - recent, -1):
            payload = log[i]
            if type(payload) is not list or not any(id(m) in self.pending for m in payload):
                continue
            log[i] = [_shrunk(m) if self.pending.pop(id(m), None) else m for m in payload]
        # A message queued when ``batch_count`` was ``sent`` leaves in batch ``sent + 1`` (or
        # ``sent + 2``, queued from another thread); batches before the current one are
        # written and logged. One not found by now went in a "large-message" batch (never
        # logged): keeping it would hold its payload (~10 MB a 100,000-yield round).
        count = stream.batch_count
        self.pending = {k: (m, sent) for k, (m, sent) in self.pending.items() if count - sent < 3}
        if self.pending and not self.timer:
            self.timer = True
            stream.loop.call_later(_SHRINK_SWEEP_S, self.sweep)


_shrinkers: weakref.WeakKeyDictionary[Any, _Shrinker] = weakref.WeakKeyDictionary()


def shrink_once_logged(stream: Any, msg: dict[str, Any]) -> None:
    """Shrink the log's copy of ``msg`` (daskgen's, queued on Dask's ``stream``) once the
    stream has written it."""
    if stream is None or not hasattr(stream, "recent_message_log"):
        return
    if not any(_bulk(msg.get(f)) > 16 for f in _BULKY):
        return
    try:
        here = asyncio.get_running_loop() is getattr(stream.loop, "asyncio_loop", None)
    except RuntimeError:
        here = False
    if not here:  # from a user's thread: on the stream's loop, after the send it queued
        stream.loop.add_callback(_shrink_later, stream, msg)
        return
    _shrink_later(stream, msg)


def _shrink_later(stream: Any, msg: dict[str, Any]) -> None:
    shrinker = _shrinkers.get(stream)
    if shrinker is None:
        shrinker = _shrinkers[stream] = _Shrinker(stream)
    shrinker.pending[id(msg)] = (msg, stream.batch_count)
    if len(shrinker.pending) > 16 and not shrinker.timer:
        shrinker.sweep()
    elif not shrinker.timer:
        shrinker.timer = True
        stream.loop.call_later(_SHRINK_SWEEP_S, shrinker.sweep)


# ---------------------------------------------------------------------------- batching intervals


def set_batching_interval(stream: Any, seconds: float) -> None:
    """Change a ``BatchedSend``'s flush interval (hard-coded by Dask per connection)."""
    if stream is not None and hasattr(stream, "interval"):
        stream.interval = seconds


def client_batched_comm(client: Client) -> Any:
    """The client's batched stream to the scheduler."""
    return client.scheduler_comm


# ------------------------------------------------------------------- the embedded cluster's parts


# ``dask spec ...``, but a process that ends with the one that started it (Linux's
# PR_SET_PDEATHSIG: SIGTERM, which the nanny handles by closing its worker): a driver killed
# by SIGTERM left its embedded workers running ~35-40 s, until they gave up on the scheduler.
# It runs the ``spec`` command's own function rather than ``python -m dask spec``: the ``dask``
# command first loads every installed package's ``dask_cli`` entry points, reading the metadata
# of every installed distribution (~10 ms here, more where more is installed).
_DIE_WITH_PARENT = """
import os, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() == 1:  # the parent is gone already
        sys.exit(0)
sys.argv[0] = "dask spec"
from distributed.cli.dask_spec import main
main()
"""


def spawned_worker_class(
    environ: Callable[[], dict[str, str]], nanny_environ: dict[str, Any]
) -> type[SubprocessWorker]:
    """A ``SubprocessWorker`` whose ``dask spec`` process starts with ``environ()``
    (read as it starts) on top of this process's environment, and whose nanny gives its
    worker ``nanny_environ``
    (Dask's ``distributed.nanny.pre-spawn-environ``, passed through the config Dask hands to
    the processes it starts). ``SubprocessWorker._start`` has no hook for either.

    The nanny forks its worker (``distributed.worker.multiprocessing-method``) rather than
    spawning a fresh interpreter that imports Dask again: the nanny's process is this one's own,
    started a moment before with one thread, so forking it is safe, and it took ~0.4 s off
    ``init()`` here (Python's start and Dask's import, ~0.45 s, ran twice in a row per worker).
    Its environment already holds ``environ()``, which includes the malloc settings."""

    class SpawnedWorker(SubprocessWorker):
        async def _start(self) -> None:
            spec = json.dumps({"cls": self.worker_class, "opts": self.worker_kwargs})
            env = dict(os.environ)
            inherited = env.get("DASK_INTERNAL_INHERIT_CONFIG")
            config = dask.config.deserialize(inherited) if inherited else {}
            dask.config.update(
                config,
                {
                    "distributed": {
                        "nanny": {"pre-spawn-environ": nanny_environ},
                        "worker": {"multiprocessing-method": "fork"},
                    }
                },
            )
            env["DASK_INTERNAL_INHERIT_CONFIG"] = dask.config.serialize(config)
            env.update(environ())
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _DIE_WITH_PARENT,
                self.scheduler,
                "--spec",
                spec,
                env=env,
            )

    return SpawnedWorker


def memory_limit(value: Any, n_workers: int) -> int | None:
    """Dask's reading of a worker ``memory_limit`` ("auto", "4GB", a fraction...)."""
    import logging

    from distributed.worker_memory import parse_memory_limit

    return parse_memory_limit(value, 1, n_workers, logger=logging.getLogger("daskgen"))


def scheduler_inproc_address(scheduler: Scheduler) -> str | None:
    """The scheduler's ``inproc://`` address, if it listens on one."""
    for listener in getattr(scheduler, "listeners", ()):
        if listener.contact_address.startswith("inproc://"):
            return str(listener.contact_address)
    return None


def scheduler_batched_streams(scheduler: Scheduler) -> dict[str, Any]:
    """The scheduler's batched stream to each worker and client, by address or client id."""
    return {**scheduler.stream_comms, **scheduler.client_comms}


def scheduler_stream_to(scheduler: Scheduler, worker_or_client: str) -> Any:
    streams = scheduler.stream_comms
    return streams.get(worker_or_client) or scheduler.client_comms.get(worker_or_client)


def worker_batched_stream(worker: Worker) -> Any:
    """The worker's batched stream to the scheduler."""
    return worker.batched_stream


async def scheduler_register_worker_plugin(scheduler: Scheduler, plugin: Any) -> None:
    """Register a worker plugin from the scheduler's side (its ``register_worker_plugin``
    handler, what ``Client.register_plugin`` calls): workers that register later get it as
    they register."""
    from distributed.protocol.pickle import dumps as _dumps

    await scheduler.register_worker_plugin(None, _dumps(plugin), plugin.name, idempotent=False)


def scheduler_plugin(scheduler: Scheduler, name: str) -> Any:
    return scheduler.plugins.get(name)


def batched_send(comm: Any, interval: float) -> Any:
    """Dask's ``BatchedSend`` on ``comm``, started, batching every ``interval`` seconds: how
    daskgen's own connections (actor calls and their replies) send, as Dask's streams do."""
    from distributed.batched import BatchedSend

    stream = BatchedSend(interval=interval)
    stream.start(comm)
    return stream


# ------------------------------------------------------------------- what daskgen installs


async def client_register_scheduler_plugin(client: Client, plugin: Any, name: str) -> None:
    """``Client.register_plugin`` for a scheduler plugin, awaitable on the client's loop (the
    public call blocks, and cannot be made from there)."""
    from distributed.protocol.pickle import dumps

    await client.scheduler.register_scheduler_plugin(
        plugin=dumps(plugin), name=name, idempotent=True
    )


_PROBE = """
def daskgen_probe():
    import importlib.util
    if importlib.util.find_spec("daskgen") is None:
        return None
    from daskgen._protocol import VERSION
    return VERSION
"""


def daskgen_probe() -> Callable[[], Any]:
    """A function that tells which daskgen a process has (None: none), pickled by value (its
    module is not importable), so that it runs where daskgen is missing too."""
    namespace: dict[str, Any] = {"__name__": "daskgen_probe_module"}
    exec(_PROBE, namespace)
    return namespace["daskgen_probe"]  # type: ignore[no-any-return]
