"""Every private dask.distributed internal daskgen touches, and nothing else.

Dask's public API has no way to turn a value that lives in a running task into a key of its own
(``scatter`` pickles and copies it, and costs ~100x more per small item: see
``benchmarks/publish_mechanisms.py``), so the yield mechanism uses a few
internals. They are wrapped here, one small function each, so that a Dask upgrade that moves one
breaks exactly one place; ``tests/test_dask_internals.py`` checks each of them against the
installed Dask and fails loudly when one is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from time import time
from typing import Any

from distributed import Client, Future, Worker
from distributed.scheduler import Scheduler

Key = Any

# --------------------------------------------------------------------------------------- client


def _loop(client: Client) -> Any:
    loop = client.loop
    assert loop is not None, "the client is closed"
    return loop


def client_add_stream_handler(client: Client, op: str, handler: Callable[..., Any]) -> None:
    """Handle messages with ``op`` that the scheduler sends on the client's batched stream."""
    client._stream_handlers[op] = handler


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
    """Queue ``msg`` on the client's batched stream to the scheduler (thread-safe)."""
    client._send_to_scheduler(msg)


def client_desires(client: Client, keys: list[Key]) -> None:
    """Tell the scheduler this client holds ``keys`` (a ref unpickled in another process).

    Dask no longer registers futures that travel inside task data (dask/distributed #8827);
    without this the receiver's future would never be told the key is in memory.
    """
    client._send_to_scheduler({"op": "client-desires-keys", "keys": keys, "client": client.id})


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
) -> None:
    """``client.submit`` for a key this client already holds a ``Future`` of.

    ``Client.submit`` returns the existing future instead of submitting when the key is known,
    but a task that waited for a yield (see ``_remote_function``) had to hand out its ref first.
    This is the body of ``Client.submit`` without that check.
    """
    from dask._expr import LLGExpr
    from dask._task_spec import Task, parse_input
    from distributed.spans import SpanMetadata

    expr = LLGExpr(
        {key: Task(key, func, *(parse_input(a) for a in args))}, _determ_token=key_token(key)
    )
    client._graph_to_futures(
        expr,
        [key],
        internal_priority={key: 0},
        resources=resources,
        retries=retries,
        workers=workers,
        allow_other_workers=False if workers else None,
        span_metadata=SpanMetadata(collections=[{"type": "Future"}]),
    )


def on_client_loop(client: Client, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on the client's event loop (where future states may be changed)."""
    _loop(client).add_callback(fn, *args)


def key_token(key: Key) -> str:
    return str(key).rpartition("-")[2]


def erred_future(client: Client, key: Key, error: BaseException) -> Future:
    """A future of this client only, already failed with ``error`` (a key the cluster never
    sees: the ref that reports why a stream ended)."""
    future: Future = Future(key, client)
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


# --------------------------------------------------------------------------------------- worker


def worker_add_stream_handler(worker: Worker, op: str, handler: Callable[..., Any]) -> None:
    """Handle messages with ``op`` that the scheduler sends on the worker's batched stream."""
    worker.stream_handlers[op] = handler


def worker_store(worker: Worker, data: dict[Key, object]) -> dict[Key, int]:
    """Put ``data`` in the worker's memory under its keys, in place: no copy, no pickling.

    Runs on the worker's event loop. ``update_data`` takes fresh keys through the worker's state
    machine as scattered data, which sends nothing to the scheduler (the publish message does).
    Keys the worker already holds are skipped (a re-run of a generator on the same worker: the
    first attempt's value stays, so no index mixes attempts). Returns the sizes Dask measured.
    """
    tasks = worker.state.tasks
    fresh = {k: v for k, v in data.items() if (ts := tasks.get(k)) is None or ts.state != "memory"}
    if not fresh:
        return {}
    result = worker.update_data(data=fresh, stimulus_id=f"daskgen-publish-{time()}")
    return {k: int(n) for k, n in result["nbytes"].items()}


def worker_overwrite(worker: Worker, keys: list[Key], value: object) -> None:
    """Replace the values this worker holds for ``keys`` (published yields turned into errors).

    Runs on the worker's loop, after the publishes queued before it. Copies that other workers
    already fetched keep the old value.
    """
    for key in keys:
        if key in worker.data:
            worker.data[key] = value


def worker_send(worker: Worker, msg: dict[str, Any]) -> None:
    """Queue ``msg`` on the worker's ordered batched stream to the scheduler."""
    worker.batched_stream.send(msg)


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


def worker_current_resources(worker: Worker, key: Key) -> dict[str, float]:
    ts = worker.state.tasks.get(key)
    return dict(ts.resource_restrictions or {}) if ts is not None else {}


# ------------------------------------------------------------------------------------ scheduler


def scheduler_add_stream_handler(
    scheduler: Scheduler, op: str, handler: Callable[..., Any]
) -> None:
    """Handle ``op`` on workers' and clients' batched streams (one table serves both)."""
    scheduler.stream_handlers[op] = handler


def scheduler_add_handler(scheduler: Scheduler, op: str, handler: Callable[..., Any]) -> None:
    """Answer requests ``op`` (``await client.scheduler.<op>(...)``), as extensions do."""
    scheduler.handlers[op] = handler


def scheduler_clients(scheduler: Scheduler) -> list[str]:
    return list(scheduler.client_comms)


def scheduler_has_client(scheduler: Scheduler, client: str) -> bool:
    return client in scheduler.client_comms


def scheduler_send_to_client(scheduler: Scheduler, client: str, msg: dict[str, Any]) -> None:
    scheduler.client_send(client, msg)


def scheduler_send_to_worker(scheduler: Scheduler, worker: str, msg: dict[str, Any]) -> None:
    scheduler.worker_send(worker, msg)


def scheduler_key_state(scheduler: Scheduler, key: Key) -> str | None:
    ts = scheduler.tasks.get(key)
    return None if ts is None else ts.state


def scheduler_holders(scheduler: Scheduler, key: Key) -> set[str]:
    ts = scheduler.tasks.get(key)
    return {ws.address for ws in (ts.who_has or ())} if ts is not None else set()


def scheduler_processing_on(scheduler: Scheduler, key: Key) -> str | None:
    ts = scheduler.tasks.get(key)
    ws = ts.processing_on if ts is not None else None
    return ws.address if ws is not None else None


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


def scheduler_free_on_worker(scheduler: Scheduler, worker: str, keys: Iterable[Key]) -> None:
    """Make ``worker`` drop keys the scheduler never registered (duplicates, orphans)."""
    scheduler.worker_send(
        worker, {"op": "free-keys", "keys": list(keys), "stimulus_id": "daskgen-free"}
    )


# ---------------------------------------------------------------------------- batching intervals


def set_batching_interval(stream: Any, seconds: float) -> None:
    """Change a ``BatchedSend``'s flush interval (hard-coded by Dask per connection)."""
    if stream is not None and hasattr(stream, "interval"):
        stream.interval = seconds


def client_batched_comm(client: Client) -> Any:
    """The client's batched stream to the scheduler."""
    return client.scheduler_comm
