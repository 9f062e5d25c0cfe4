"""What runs inside a Dask task: argument unpacking, the user's function, errors, and generators.

A generator task publishes every yield as its own key the moment it is yielded (see
``_protocol`` for the keys and messages): the value goes into this worker's memory as is, through
the worker's own event loop, then one message tells the scheduler, which makes the key the
caller's. The generator thread never waits for that, and keeps no reference to past values.
The task's own result is a small :class:`GenOutcome`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
from distributed import Worker, get_worker

from . import _dask_internals as dx
from ._protocol import CONSUMED_OP, PUBLISH_OP, ErrorValue, GenOutcome, Key, yield_key
from .exceptions import RayTaskError


logger = logging.getLogger("daskgen")


class Dep:
    """Placeholder, in pickled arguments, for the value of the i-th dependency future."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return Dep, (self.index,)


def arg_value(value: Any) -> Any:
    """What a task sees for a top-level ref argument: the value, or the upstream error raised."""
    from ._api import unwrap

    return unwrap(value)


def unpack_args(packed: bytes | None, deps: tuple[Any, ...]) -> tuple[list[Any], dict[str, Any]]:
    if packed is None:
        return [], {}
    args, kwargs = cloudpickle.loads(packed)
    args = [arg_value(deps[a.index]) if type(a) is Dep else a for a in args]
    for k, v in kwargs.items():
        if type(v) is Dep:
            kwargs[k] = arg_value(deps[v.index])
    return args, kwargs


class Retry:
    """Which application errors are retried, and how often (Ray's retry_exceptions/max_retries)."""

    def __init__(self, retry_exceptions: bool | list[type], max_retries: int) -> None:
        self.types: tuple[type, ...] | None = (
            tuple(retry_exceptions) if isinstance(retry_exceptions, (list, tuple)) else None
        )
        self.enabled = bool(retry_exceptions)
        self.max_retries = max_retries

    def retryable(self, exc: BaseException, attempt: int) -> bool:
        if not self.enabled or isinstance(exc, RayTaskError):  # upstream errors never heal
            return False
        if self.types is not None and not isinstance(exc, self.types):
            return False
        return self.max_retries < 0 or attempt < self.max_retries


def wrap_error(exc: BaseException, name: str) -> RayTaskError:
    """``RayTaskError(Cause)`` with the remote traceback; picklable whatever the cause."""
    worker = _worker_or_none()
    where = f"pid={os.getpid()}" + (f", worker={worker.address}" if worker is not None else "")
    err = RayTaskError.from_exception(exc, name, where)
    try:
        cloudpickle.dumps(err)
    except Exception:
        stand_in = RuntimeError(
            f"{type(exc).__name__}: {exc} (the original exception could not be pickled)"
        )
        err = RayTaskError.from_exception(stand_in, name, where)
        err.traceback_str = RayTaskError.from_exception(exc, name, where).traceback_str
    return err


def _worker_or_none() -> Worker | None:
    try:
        return get_worker()
    except ValueError:
        return None


class TaskSpec:
    """The callable Dask runs for one remote function and its options.

    Hashed by identity, so Dask pickles it once per ``.options()`` variant, not once per call.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        mode: str,
        num_returns: int,
        retry: Retry,
        backpressure: int | None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.mode = mode  # "plain", "static", "dynamic" or "streaming"
        self.num_returns = num_returns
        self.retry = retry
        self.backpressure = backpressure
        self.__name__ = name  # what Dask shows for the task's function

    def __call__(self, caller: str, packed: bytes | None, *deps: Any) -> Any:
        try:
            args, kwargs = unpack_args(packed, deps)
        except RayTaskError as upstream:  # an argument was an error: pass it down, unwrapped
            return self._fail_all(upstream, caller)
        if self.mode == "plain":
            return self._call(args, kwargs)
        worker = get_worker()
        return Producer(self, worker, worker.get_current_task(), caller).run(args, kwargs)

    def _call(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except Exception as exc:
            err = wrap_error(exc, self.name)
            if (
                self.retry.enabled
                and self.retry.types is not None
                and not self.retry.retryable(exc, 0)
            ):
                # Dask would retry anything raised; an error Ray would not retry is returned.
                return ErrorValue(err)
            raise err from None

    def _fail_all(self, error: RayTaskError, caller: str) -> Any:
        if self.mode == "plain":
            return ErrorValue(error)
        worker = get_worker()
        producer = Producer(self, worker, worker.get_current_task(), caller)
        return producer.fail_before_start(error)


# ------------------------------------------------------------------------------ generator tasks

_producers: dict[Key, Producer] = {}
_producers_lock = threading.Lock()


def _on_consumed(task: str, index: int, **_: Any) -> None:
    """Worker stream handler: the consumer of ``task`` has taken refs up to ``index``."""
    producer = _producers.get(task)
    if producer is not None:
        producer.on_consumed(index)


class _Cancelled(Exception):
    """The scheduler released the task (cancel, or the caller left): stop producing."""


class Producer:
    """Drives one generator inside its task and publishes each yield."""

    def __init__(self, spec: TaskSpec, worker: Worker, task: str, caller: str) -> None:
        self.spec = spec
        self.worker = worker
        self.task = task
        self.caller = caller
        self.count = 0  # indices published so far, over every attempt in this run
        self.consumed = 0  # refs the consumer has taken (backpressure)
        self.cond = threading.Condition()

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, index: int, value: Any) -> None:
        """Store ``value`` as yield ``index`` on this worker and announce it (non-blocking)."""
        self.worker.loop.add_callback(
            _store_and_announce,
            self.worker,
            self.task,
            self.caller,
            yield_key(self.task, index),
            index,
            value,
        )

    def overwrite(self, indices: range, error: RayTaskError) -> None:
        """Replace published yields by an error (a surplus or a changed count on re-run)."""
        keys = [yield_key(self.task, i) for i in indices]
        self.worker.loop.add_callback(dx.worker_overwrite, self.worker, keys, ErrorValue(error))

    # -- running -------------------------------------------------------------------------------

    def run(self, args: list[Any], kwargs: dict[str, Any]) -> GenOutcome | None:
        spec = self.spec
        if spec.backpressure:
            dx.worker_add_stream_handler(self.worker, CONSUMED_OP, _on_consumed)
            with _producers_lock:
                _producers[self.task] = self
        try:
            attempt = 0
            while True:
                yielded = 0
                try:
                    for yielded in self._drive(args, kwargs):
                        pass
                except _Cancelled:
                    return None
                except _Surplus as surplus:
                    return self._finish_surplus(surplus.total)
                except Exception as exc:
                    if spec.retry.retryable(exc, attempt):
                        attempt += 1
                        continue  # in this task: only here do we know whether this was the last try
                    return self._finish_error(wrap_error(exc, spec.name), yielded)
                return self._finish(yielded)
        finally:
            if spec.backpressure:
                with _producers_lock:
                    _producers.pop(self.task, None)

    def _drive(self, args: list[Any], kwargs: dict[str, Any]) -> Iterator[int]:
        """Run the generator once, publishing new indices; yields the running count."""
        spec = self.spec
        limit = spec.num_returns if spec.mode == "static" else None
        it = _iterate(spec.fn(*args, **kwargs), spec)
        index = 0
        try:
            for value in it:
                if not dx.worker_task_alive(self.worker, self.task):
                    raise _Cancelled
                if limit is not None and index >= limit:
                    del value
                    raise _Surplus(index + 1 + sum(1 for _ in self._alive(it)))
                if index >= self.count:  # a re-run skips what an earlier attempt published
                    self.publish(index, value)
                    self.count = index + 1
                del value  # the generator must not keep past values alive
                index += 1
                yield index
                self._respect_backpressure()
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _alive(self, it: Iterator[Any]) -> Iterator[Any]:
        for _ in it:
            if not dx.worker_task_alive(self.worker, self.task):
                raise _Cancelled
            yield None

    def _respect_backpressure(self) -> None:
        limit = self.spec.backpressure
        if not limit:
            return
        from ._api import blocking

        with self.cond:
            if self.count - self.consumed < limit:
                return
        with blocking(), self.cond:
            while self.count - self.consumed >= limit:
                # Woken by the consumer; the timeout only re-checks for cancellation.
                self.cond.wait(timeout=0.5)
                if not dx.worker_task_alive(self.worker, self.task):
                    raise _Cancelled

    def on_consumed(self, index: int) -> None:
        with self.cond:
            self.consumed = max(self.consumed, index + 1)
            self.cond.notify_all()

    # -- endings -------------------------------------------------------------------------------

    def _count_error(self, got: int) -> RayTaskError:
        return wrap_error(
            ValueError(f"Task returned {got} objects, but num_returns={self.spec.num_returns}."),
            self.spec.name,
        )

    def _fail(self, indices: range, error: RayTaskError) -> None:
        """Make the refs at ``indices`` raise ``error``: publish new ones, replace old ones."""
        old = range(indices.start, min(indices.stop, self.count))
        if old:
            self.overwrite(old, error)
        for i in range(max(indices.start, self.count), indices.stop):
            self.publish(i, ErrorValue(error))
        self.count = max(self.count, indices.stop)

    def _finish(self, yielded: int) -> GenOutcome:
        spec = self.spec
        if spec.mode == "static" and yielded < spec.num_returns:
            self._fail(range(yielded, spec.num_returns), self._count_error(yielded))
        elif yielded < self.count:
            # A re-run yielded fewer values than an earlier attempt already handed out.
            err = wrap_error(
                ValueError(
                    f"The generator was re-run and yielded {yielded} values, but an earlier "
                    f"attempt yielded {self.count}; refs {yielded}..{self.count - 1} are invalid."
                ),
                spec.name,
            )
            self.overwrite(range(yielded, self.count), err)
        return GenOutcome(self.task, spec.mode, self.count)

    def _finish_error(self, error: RayTaskError, yielded: int) -> GenOutcome:
        spec = self.spec
        if spec.mode == "static":
            if yielded >= spec.num_returns:
                # Every ref already has its value; like Ray, the late error is only logged.
                logger.error(
                    "Unhandled error: Task threw exception, but all return values already "
                    "created. This should only occur when using generator tasks.\n%s",
                    error,
                )
            else:
                self._fail(range(yielded, spec.num_returns), error)
            return GenOutcome(self.task, spec.mode, self.count)
        # The error is one more ref, after the values of this attempt.
        self._fail(range(yielded, yielded + 1), error)
        if self.count > yielded + 1:  # an earlier attempt went further: those refs are invalid
            self.overwrite(range(yielded + 1, self.count), error)
        return GenOutcome(self.task, spec.mode, yielded + 1, error_index=yielded)

    def _finish_surplus(self, total: int) -> GenOutcome:
        # Beyond Ray (which only logs this, ray#28689): every ref fails, naming both counts.
        n = self.spec.num_returns
        self.overwrite(range(n), self._count_error(total))
        return GenOutcome(self.task, self.spec.mode, self.count)

    def fail_before_start(self, error: RayTaskError) -> GenOutcome:
        return self._finish_error(error, 0)


class _Surplus(Exception):
    def __init__(self, total: int) -> None:
        self.total = total


def _iterate(result: Any, spec: TaskSpec) -> Iterator[Any]:
    """The values a call produced: a generator's yields, or a returned sequence's items."""
    if inspect.isasyncgen(result):
        return _drain_async(result)
    if spec.mode != "static" or inspect.isgenerator(result):
        return result
    # num_returns=N on a plain function: it returns N values, published like N yields.
    try:
        return iter(result)
    except TypeError:
        raise ValueError(
            f"Task returned a {type(result).__name__}, but num_returns={spec.num_returns} needs "
            f"a sequence of {spec.num_returns} values."
        ) from None


def _drain_async(agen: Any) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def _store_and_announce(
    worker: Worker, task: str, caller: str, key: Key, index: int, value: Any
) -> None:
    """On the worker's loop: keep ``value`` in memory as ``key``, then tell the scheduler."""
    nbytes = dx.worker_store(worker, key, value)
    if nbytes is None:
        return  # this worker already holds that index from an earlier attempt
    dx.worker_send(
        worker,
        {
            "op": PUBLISH_OP,
            "task": task,
            "caller": caller,
            "key": key,
            "index": index,
            "nbytes": nbytes,
        },
    )
