"""What Dask runs inside a task (in the worker process): argument unpacking, the user's
function and its errors; :class:`TaskSpec` is the callable of every daskgen task.

Generator tasks hand over to ``publish.Producer``, which publishes every yield as its own key.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy
from distributed import Worker, get_worker
from distributed.comm import get_address_host
from distributed.utils import sync

from .. import _dask_internals as dx
from .. import _runtime
from .._cluster.fastlane import send_soon
from .._job import Job
from .._objects.resolve import unwrap
from .._protocol import (
    HELLO_OP,
    RESULT_OP,
    VERSION,
    Dep,
    ErrorValue,
    Packed,
    Stored,
    boxed,
    code_file,
    with_code_file,
)
from .._runtime import current_job
from ..exceptions import RaySystemError, RayTaskError, TaskCancelledError
from .interrupt import ForceCancelled, finish_detached, running, was_cancelled
from .output import origin_for, task_origin
from .publish import Producer, inline_bytes
from .runtime_env import applied

logger = logging.getLogger("daskgen")


_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, range)


def arg_value(value: Any) -> Any:
    """What a task sees for a top-level ref argument: the value, or the upstream error raised.

    As in Ray, a task cannot change the stored value through its argument: Dask hands every
    task on a worker the very object that worker holds, so a task that appended to a list it
    was given changed what the next reader of the ref got. A NumPy array comes as a read-only
    view (no copy; writing to it raises, as on Ray); any other mutable value as a copy (a
    pickle round trip, as Ray deserialises it for each task), or as it is if it cannot be
    pickled here."""
    value = unwrap(value)
    if isinstance(value, _IMMUTABLE):
        return value
    if type(value) is numpy.ndarray:
        view = value.view()
        view.flags.writeable = False
        return view
    try:
        return pickle.loads(pickle.dumps(value, protocol=5))
    except Exception:  # not picklable (a lock, a generator...): the object itself
        return value


def unpack_args(packed: Any, deps: tuple[Any, ...]) -> tuple[list[Any], dict[str, Any]]:
    """A call's arguments: its pickled ones (bytes, a large ``Packed``, or ``Stored`` as a
    dependency of their own) with each ``Dep`` replaced by the value of that dependency."""
    if packed is None:
        return [], {}
    buffers: Any
    if type(packed) is Stored:
        stored = deps[packed.index]
        # Shared by every task on this worker that takes them: read-only (as Ray's are).
        blob, buffers = stored.blob, [memoryview(b).toreadonly() for b in stored.buffers]
    elif type(packed) is Packed:
        blob, buffers = packed.blob, packed.buffers
    else:
        blob, buffers = packed, ()
    args, kwargs = cloudpickle.loads(blob, buffers=buffers)
    args = [arg_value(deps[a.index]) if type(a) is Dep else _by_value(a) for a in args]
    for k, v in kwargs.items():
        kwargs[k] = arg_value(deps[v.index]) if type(v) is Dep else _by_value(v)
    return args, kwargs


def _by_value(value: Any) -> Any:
    """A NumPy array passed by value comes read-only, as on Ray (whatever its size)."""
    if type(value) is numpy.ndarray:
        value.flags.writeable = False
    return value


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


def wrap_error(exc: BaseException, name: str, more: str = "") -> RayTaskError:
    """``RayTaskError(Cause)`` with the remote traceback; picklable whatever the cause.

    Its first line is Ray's: ``ray::name() (pid=..., ip=...[, more])``."""
    worker = _worker_or_none()
    where = f"pid={os.getpid()}" + (f", ip={get_address_host(worker.address)}" if worker else "")
    where += f", {more}" if more else ""
    err = RayTaskError.from_exception(exc, name, where)
    try:
        cloudpickle.dumps(err)
    except Exception:
        stand_in = RuntimeError(
            f"{type(exc).__name__}: {exc} (the original exception could not be pickled)"
        )
        err = RayTaskError.from_exception(stand_in, name, where)
        err.traceback_str = RayTaskError.from_exception(exc, name, where).traceback_str
    _drop_frames(exc)
    return err


def _drop_frames(exc: BaseException | None) -> None:
    """Forget the tracebacks of ``exc`` and its chain, now written into the error's text.

    The error may stay in the worker's memory as the task's value; its frames would keep the
    task's locals alive with it: values, and refs that keep keys in the cluster.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def _send_inline_result(caller: str, result: Any) -> Any:
    """Send a small result to the caller along with the task's completion, then return it.

    Dask makes the caller fetch a result with a further request (client -> scheduler -> worker
    and back) after the task finished; a small one riding ahead on the worker's stream saves
    that round trip, as Ray returns small results inline. Dask still stores the result as usual.
    """
    blob = inline_bytes(result)
    if blob is None:
        return boxed(result)  # a large list moves between workers as one pickle (see Put)
    worker = get_worker()
    msg = {"op": RESULT_OP, "caller": caller, "key": worker.get_current_task(), "blob": blob}
    # Queued before the task returns; by the fast lane on the embedded cluster, which may
    # arrive after the task's completion report (then the caller fetches it as usual).
    send_soon(worker, msg)
    return result


_checked: set[int] = set()  # ids of the workers whose scheduler has daskgen's plugin

# Calls run here straight from their caller (``_worker.direct``), by key, until their Dask task
# takes the value (``DirectCall.claim``) instead of running the function again.
served: dict[Any, Any] = {}


def check_scheduler(worker: Worker) -> None:
    """Before this worker sends daskgen's messages: its scheduler has daskgen's plugin, of this
    version (a message the scheduler does not know closes the worker's connection, and the
    worker with it). Asked once per worker (a request, safe either way)."""
    if id(worker) in _checked:
        return
    version = sync(worker.loop, dx.worker_ask_scheduler, worker, HELLO_OP)
    if version != VERSION:
        found = "none" if version is None else f"daskgen {version}"
        raise RaySystemError(
            f"The Dask scheduler of worker {worker.address} does not serve daskgen {VERSION} "
            f"({found}): the driver registers daskgen's plugin there when it connects, and "
            "again after the scheduler restarts. Was it restarted without daskgen installed?"
        )
    # Freed keys are forgotten without a message back per key (which the scheduler ignores,
    # and Dask's stream keeps in its log): a generator's yields are thousands of keys.
    worker.loop.add_callback(dx.worker_forget_directly, worker)
    _checked.add(id(worker))


def _worker_or_none() -> Worker | None:
    try:
        return get_worker()
    except ValueError:
        return None


def _served_by_worker(client: Any) -> bool:
    """``_runtime.served_by_worker``: ``client`` talks to the scheduler this worker checked."""
    worker = _worker_or_none()
    if worker is None or id(worker) not in _checked:
        return False
    try:
        return bool(client.scheduler.address == worker.scheduler.address)
    except AttributeError:
        return False


def _send_on_worker_stream(client: Any, msg: dict[str, Any]) -> bool:
    """``_runtime.send_on_worker_stream``: on this worker's ordered stream (queued from here,
    so ahead of the running task's end), if ``client`` talks to the scheduler it checked."""
    if not _served_by_worker(client):
        return False
    worker = _worker_or_none()
    assert worker is not None
    worker.loop.add_callback(dx.worker_send, worker, msg)
    return True


_runtime.served_by_worker = _served_by_worker
_runtime.send_on_worker_stream = _send_on_worker_stream


@functools.lru_cache(maxsize=512)
def _spec_from_bytes(blob: bytes) -> LazySpec:
    return LazySpec(blob)


class LazySpec:
    """A pickled ``TaskSpec``, unpickled where a call first runs it, not where Dask reads the
    task: Dask unpickles a task on the worker's event loop as it arrives, where the function's
    globals (a handle, a ref: bound to a client) would find no task to be part of, and where a
    module of the call's ``runtime_env`` (working_dir, py_modules, pip) is not on ``sys.path``.
    Made once per process for each distinct spec, unpickled once."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.spec: TaskSpec | None = None
        self.__name__ = "daskgen-task"

    def load(self, env: Any) -> TaskSpec:
        """The spec, unpickled here in ``env`` (the call's runtime_env) the first time."""
        spec = self.spec
        if spec is None:
            with applied(env, get_worker()):
                *state, filename = cloudpickle.loads(self.blob)
            spec = TaskSpec(*state)
            with_code_file(spec.fn, filename)  # tracebacks show the user's file and line
            self.spec = spec
        return spec

    def __call__(self, call: tuple[Any, ...], packed: Any, *deps: Any) -> Any:
        return self.load(call[2].env)(call, packed, *deps)

    def __getattr__(self, name: str) -> Any:
        # A remote function unpickled inside a task holds this: used there (its ``mode``,
        # ``placed``...), it is the spec itself, unpickled there (in the task's environment).
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.load(None), name)

    def pickled(self) -> bytes:
        return self.blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (spec_from_blob, (pickle.PickleBuffer(self.blob),))


def spec_from_blob(blob: Any) -> LazySpec:
    """A pickled ``TaskSpec`` (see :class:`LazySpec`), once per process for each distinct one."""
    return _spec_from_bytes(bytes(blob))


class TaskSpec:
    """The callable Dask runs for one remote function and its options.

    Pickled once (its function by value, with cloudpickle) and then sent as those bytes, out of
    band: Dask pickles each call's whole graph, and the function with it, every time (~0.3 ms
    a call here, half of ``.remote()``'s cost). Workers unpickle each distinct spec once
    (``spec_from_blob``). As in Ray, a function is exported as it was at its first call.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        mode: str,
        num_returns: int,
        retry: Retry,
        backpressure: int | None,
        placement: tuple[Any, bool] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.mode = mode  # "plain", "static", "dynamic" or "streaming"
        self.num_returns = num_returns
        self.retry = retry
        self.backpressure = backpressure
        # Its placement group and whether its children join it (get_current_placement_group)
        self.placement = placement
        self.__name__ = name  # what Dask shows for the task's function
        self._blob: bytes | None = None
        self._pickling = False
        self._placed: dict[Any, TaskSpec] = {}

    def placed(self, placement: tuple[Any, bool]) -> TaskSpec:
        """This spec for calls in placement group ``placement[0]`` (made once per group)."""
        key = (str(placement[0].id), placement[1])
        spec = self._placed.get(key)
        if spec is None:
            if len(self._placed) > 64:
                self._placed.clear()
            state = (self.fn, self.name, self.mode, self.num_returns, self.retry)
            spec = self._placed[key] = TaskSpec(*state, self.backpressure, placement)
        return spec

    def _state(self) -> tuple[Any, ...]:
        return (
            self.fn,
            self.name,
            self.mode,
            self.num_returns,
            self.retry,
            self.backpressure,
            self.placement,
        )

    def pickled(self) -> bytes:
        """The spec's pickle (made once): what ``spec_from_blob`` takes."""
        if self._blob is None:
            self._pickling = True
            try:
                self._blob = cloudpickle.dumps((*self._state(), code_file(self.fn)), protocol=5)
            finally:
                self._pickling = False
        return self._blob

    def __reduce__(self) -> tuple[Any, ...]:
        if self._blob is None and self._pickling:
            # inside its own blob (a recursive function): as a plain value
            return (TaskSpec, self._state())
        return (spec_from_blob, (pickle.PickleBuffer(self.pickled()),))

    def __call__(self, call: tuple[str, str | None, Job], packed: Any, *deps: Any) -> Any:
        """``call``: the caller's client id (who holds the results), the output's owner
        (whose terminal shows what the task prints; None: not forwarded) and the job the
        call runs in (its driver's namespace, its runtime_env: see ``_job``)."""
        caller, owner, job = call
        worker = get_worker()
        check_scheduler(worker)
        key = worker.get_current_task()
        direct = served.get(key)
        if direct is not None:
            return direct.claim()  # it ran here already: its value (its result went back)
        token = task_origin.set(origin_for(owner, self.name, worker))
        # Always set: a thread of the worker's pool runs one task after another.
        _runtime.current_placement.set(self.placement)
        job_token = current_job.set(job)
        try:
            with applied(job.env, worker):
                try:
                    args, kwargs = unpack_args(packed, deps)
                except RayTaskError as upstream:  # an argument was an error: pass it down
                    return self._fail_all(upstream, caller)
                return self._run_interruptibly(worker, key, caller, args, kwargs)
        finally:
            current_job.reset(job_token)
            task_origin.reset(token)

    def run_direct(self, worker: Worker, key: Any, packed: Any) -> Any:
        """A plain call sent straight to this worker (``_worker.direct``), in a thread of its
        own: its value, or its error as a value (no Dask retry applies to it)."""
        try:
            args, kwargs = unpack_args(packed, ())
            return self._run_interruptibly(worker, key, None, args, kwargs)
        except RayTaskError as error:
            return ErrorValue(error)

    def _run_interruptibly(
        self,
        worker: Worker,
        key: Any,
        caller: str | None,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run the call, which ``cancel()`` may interrupt (see ``_worker.interrupt``).

        ``caller`` None: a direct call, whose value is returned as it is (not sent inline)."""
        entry = None
        try:
            if self.mode == "plain":
                with running(key) as entry:
                    result = self._call(args, kwargs)
                return result if caller is None else _send_inline_result(caller, result)
            # A generator: only its own steps are interruptible, not the publishing between.
            assert caller is not None  # generators are never direct calls
            with running(key, interruptible=False) as entry:
                return Producer(self, worker, key, caller).run(args, kwargs)
        except BaseException as exc:
            if isinstance(exc, TaskCancelledError):  # cancelled before it started
                return ErrorValue(exc) if self.mode == "plain" else None
            if was_cancelled(key) and isinstance(exc, (KeyboardInterrupt, ForceCancelled)):
                # Interrupted by cancel(): fails where it was, as Ray's task does.
                cancelled = TaskCancelledError(str(key)).with_traceback(exc.__traceback__)
                if self.mode != "plain":
                    return None  # its caller ended the stream already (GenState.cancel_task)
                return ErrorValue(wrap_error(cancelled, self.name))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                # Raised by the user's code: never let it reach Dask, which passes these two
                # up to the worker's event loop.
                raise wrap_error(exc, self.name) from None
            raise
        finally:
            if entry is not None:
                finish_detached(worker, key, entry)

    def wrap(self, exc: BaseException) -> RayTaskError:
        return wrap_error(exc, self.name)

    def _call(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        try:
            result = self.fn(*args, **kwargs)
            if inspect.iscoroutine(result):  # an ``async def`` remote function
                result = asyncio.run(result)
            return result
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
            return _send_inline_result(caller, ErrorValue(error))
        worker = get_worker()
        producer = Producer(self, worker, worker.get_current_task(), caller)
        return producer.fail_before_start(error)
