"""The worker half of actors: the live instance, its executor, and what runs for each call.

See ``_actors`` for how actors are placed and why. Here: an :class:`ActorHost` holds one actor's
instance in this worker process with its own executor (``max_concurrency`` threads, or an event
loop for async actors); :class:`ActorCall` is the Dask task of one method call, which leaves the
worker's thread pool while the host runs the method in call order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
from distributed import get_worker

from . import _dask_internals as dx
from ._api import blocking
from ._context import current_actor, current_call
from ._executor import Retry, TaskSpec, _send_inline_result, unpack_args
from ._logs import label_for, task_origin
from ._protocol import ACTOR_OP, Key
from ._publish import Producer
from .exceptions import ActorDiedError, RayTaskError

CREATION_WAIT_S = 60.0  # how long a call waits on the worker for its actor to be created

_hosts: dict[str, ActorHost] = {}
_killed: set[str] = set()
_hosts_cond = threading.Condition()


class ActorHost:
    """The live instance of one actor in this worker, and the executor that runs its calls."""

    def __init__(
        self, instance: Any, max_concurrency: int, is_async: bool, ctx: contextvars.Context
    ) -> None:
        self.instance = instance
        self.is_async = is_async
        self.cond = threading.Condition()
        self.next_seq: dict[str, int] = {}
        # ``ctx`` (the worker's context, plus the actor id) makes get_worker() and
        # get_runtime_context() work in the actor's own threads.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        if is_async:
            self.loop = asyncio.new_event_loop()
            self.semaphore = asyncio.Semaphore(max_concurrency)
            self.thread = threading.Thread(
                target=ctx.run, args=(self.loop.run_forever,), daemon=True, name="daskgen-actor"
            )
            self.thread.start()
        else:
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_concurrency,
                thread_name_prefix="daskgen-actor",
                initializer=_enter_context,
                initargs=(ctx,),
            )

    def call(self, handle_id: str, seq: int, fn: Callable[[], Any], key: Key = None) -> Any:
        """Run ``fn`` on the actor's executor, after every earlier call of the same handle."""
        fn = _as_call(fn, str(key) if key is not None else None, task_origin.get())
        with self.cond:
            # Dask may deliver call tasks out of order; start them in call order. (Bounded: a
            # call cancelled before reaching the worker must not stall the ones after it.)
            self.cond.wait_for(lambda: self.next_seq.get(handle_id, 0) >= seq, timeout=30)
            self.next_seq[handle_id] = max(self.next_seq.get(handle_id, 0), seq + 1)
            if self.loop is not None:
                fut = asyncio.run_coroutine_threadsafe(self._run_async(fn), self.loop)
            else:
                assert self.executor is not None
                fut = self.executor.submit(fn)
            self.cond.notify_all()
        return fut.result()

    async def _run_async(self, fn: Callable[[], Any]) -> Any:
        async with self.semaphore:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            return result

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _as_call(
    fn: Callable[[], Any], key: str | None, origin: tuple[str, str] | None
) -> Callable[[], Any]:
    """``fn``, run with ``get_runtime_context().get_task_id()`` answering ``key`` and its
    output forwarded to the caller."""

    def call() -> Any:
        token = current_call.set(key)
        origin_token = task_origin.set(origin)
        try:
            return fn()
        finally:
            task_origin.reset(origin_token)
            current_call.reset(token)

    return call


def _enter_context(ctx: contextvars.Context) -> None:
    # ThreadPoolExecutor threads start empty; give them the worker's context variables.
    for var, value in ctx.items():
        var.set(value)


def create_actor(
    actor_id: str,
    cls_blob: bytes,
    max_concurrency: int,
    is_async: bool,
    packed: bytes | None,
    *deps: Any,
) -> str:
    worker = get_worker()
    cls = cloudpickle.loads(cls_blob)
    args, kwargs = unpack_args(packed, deps)
    ctx = contextvars.copy_context()
    ctx.run(current_actor.set, actor_id)
    try:
        instance = ctx.run(cls, *args, **kwargs)
    except Exception as exc:
        raise RayTaskError.from_exception(exc, f"{cls.__name__}.__init__") from None
    host = ActorHost(instance, max_concurrency, is_async, ctx)
    with _hosts_cond:
        _hosts[actor_id] = host
        _hosts_cond.notify_all()
    worker.loop.add_callback(
        dx.worker_send, worker, {"op": ACTOR_OP, "actor": actor_id, "alive": True}
    )
    return worker.address


def kill_actor(actor_id: str, dask_worker: Any = None) -> None:
    with _hosts_cond:
        _killed.add(actor_id)
        host = _hosts.pop(actor_id, None)
        _hosts_cond.notify_all()
    if host is not None:
        host.stop()
    if dask_worker is not None:
        dask_worker.loop.add_callback(
            dx.worker_send, dask_worker, {"op": ACTOR_OP, "actor": actor_id, "alive": False}
        )


def _find_host(actor_id: str) -> ActorHost:
    deadline = time.monotonic() + CREATION_WAIT_S
    with _hosts_cond:
        while True:
            if actor_id in _killed:
                raise ActorDiedError(f"The actor {actor_id} is dead: it was killed.")
            host = _hosts.get(actor_id)
            if host is not None:
                return host
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ActorDiedError(
                    f"The actor {actor_id} does not exist on this worker (its worker restarted, "
                    "or it was never created)."
                )
            _hosts_cond.wait(remaining)


class ActorCall:
    """What Dask runs for one method call, on the actor's worker."""

    def __init__(
        self,
        actor_id: str,
        method: str,
        name: str,
        mode: str,
        num_returns: int,
        backpressure: int | None,
        handle_id: str,
        seq: int,
        after_creation: bool,
    ) -> None:
        self.actor_id = actor_id
        self.method = method
        self.name = name
        self.mode = mode
        self.num_returns = num_returns
        self.backpressure = backpressure
        self.handle_id = handle_id
        self.seq = seq
        # The creation task's result rides as the last dependency, only to order the call.
        self.after_creation = after_creation
        self.__name__ = name

    def __call__(self, caller: str, packed: bytes | None, *deps: Any) -> Any:
        if self.after_creation:
            deps = deps[:-1]
        token = task_origin.set((caller, label_for(self.name, get_worker().address)))
        try:
            with blocking():  # out of the worker's pool while waiting for the actor
                return self._run(caller, packed, deps)
        finally:
            task_origin.reset(token)

    def _run(self, caller: str, packed: bytes | None, deps: tuple[Any, ...]) -> Any:
        host = _find_host(self.actor_id)
        fn = getattr(host.instance, self.method)
        spec = TaskSpec(
            fn, self.name, self.mode, self.num_returns, Retry(False, 0), self.backpressure
        )
        try:
            args, kwargs = unpack_args(packed, deps)
        except RayTaskError as upstream:
            return spec._fail_all(upstream, caller)
        worker = get_worker()
        if self.mode == "plain":
            if host.is_async:
                thunk = _async_thunk(spec, fn, args, kwargs)
            else:
                thunk = lambda: spec._call(args, kwargs)  # noqa: E731
            key = worker.get_current_task()
            return _send_inline_result(caller, host.call(self.handle_id, self.seq, thunk, key))
        key = worker.get_current_task()
        producer = Producer(spec, worker, key, caller, loop=host.loop)
        if host.is_async:
            # An async generator runs item by item on the actor's loop, driven from here.
            return producer.run(args, kwargs)
        return host.call(self.handle_id, self.seq, lambda: producer.run(args, kwargs), key)


def _async_thunk(
    spec: TaskSpec, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> Callable[[], Any]:
    async def run() -> Any:
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Exception as exc:
            raise spec.wrap(exc) from None

    return run
