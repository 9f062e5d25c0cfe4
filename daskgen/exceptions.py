"""Exceptions raised by daskgen, under Ray's names.

Code written for Ray catches ``ray.exceptions.X``; after ``import daskgen as ray`` the same
``except`` clauses keep working because every class here carries Ray's name and place in the tree.
:func:`translate` is the one place where Dask's errors become these (as httpx maps foreign
errors at its one transport boundary)::

    RayError
    +-- RayTaskError            a remote function raised; also an instance of the cause's class
    +-- GetTimeoutError         get() ran out of time (also a TimeoutError)
    +-- TaskCancelledError      the task was cancelled before it produced the value
    +-- WorkerCrashedError      the worker running the task died and retries ran out
    +-- OutOfMemoryError        ... its nanny ended it for memory (the nanny's memory event)
    +-- NodeDiedError           ... it went with its nanny (host or `dask worker` gone)
    +-- TaskUnschedulableError  a hard NodeAffinitySchedulingStrategy names no live node
    +-- TaskPlacementGroupRemoved  the task's placement group was removed before it started
    +-- ObjectLostError         the only copy of a value was on a worker that died
    +-- RaySystemError          the cluster itself failed (the scheduler is unreachable)
    +-- RayActorError
        +-- ActorDiedError      the actor was killed or its worker died
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
import traceback
from typing import Any

__all__ = [
    "RayError",
    "RayTaskError",
    "GetTimeoutError",
    "TaskCancelledError",
    "WorkerCrashedError",
    "ObjectLostError",
    "RaySystemError",
    "RayActorError",
    "ActorDiedError",
    "PendingCallsLimitExceeded",
    "ActorUnavailableError",
    "ActorAlreadyExistsError",
    # Ray's names; those daskgen has no counterpart for (an object store, Ray's raylet, other
    # languages...) are defined so that Ray code's ``except ray.exceptions.X`` clauses work.
    "OutOfMemoryError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "NodeDiedError",
    "LocalRayletDiedError",
    "OwnerDiedError",
    "ObjectFetchTimedOutError",
    "ObjectReconstructionFailedError",
    "ObjectFreedError",
    "TaskUnschedulableError",
    "ActorUnschedulableError",
    "RuntimeEnvSetupError",
    "AsyncioActorExit",
    "CrossLanguageError",
    "TaskPlacementGroupRemoved",
    "ActorPlacementGroupRemoved",
    "RayChannelError",
]


class RayError(Exception):
    """Base of every error daskgen raises on purpose."""


class RayTaskError(RayError):
    """A remote function raised ``cause``.

    ``get()`` raises an instance of ``RayTaskError(CauseClass)``, a class that derives from both
    this class and the cause's class, so ``except ValueError`` and ``except RayTaskError`` both
    catch it.
    The message carries the remote traceback; ``.cause`` is the original exception.
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None,
        proctitle: str = "",
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle
        # Exception.__init__ is bypassed on purpose: the cause's class may take other arguments.
        self.args = (cause,)  # as Ray's

    def __str__(self) -> str:
        # Ray's shape: "ray::f() (pid=..., ip=...)", then the remote traceback.
        where = f" ({self.proctitle})" if self.proctitle else ""
        return f"ray::{self.function_name}(){where}\n{self.traceback_str.rstrip()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_task_error, (
            self.function_name,
            self.traceback_str,
            self.cause,
            self.proctitle,
        )

    def as_instanceof_cause(self) -> RayTaskError:
        """A new copy of this error that is an instance of ``RayTaskError(CauseClass)`` too
        (what ``get`` raises already is one; Ray code calls this on the errors it catches)."""
        return as_instanceof_cause(
            self.function_name, self.traceback_str, self.cause, self.proctitle
        )

    @classmethod
    def from_exception(
        cls, exc: BaseException, function_name: str, proctitle: str = ""
    ) -> RayTaskError:
        """Wrap ``exc`` raised by ``function_name``, unless it already is a task error."""
        if isinstance(exc, RayTaskError):
            return exc  # a nested failure keeps its original cause: never wrapped twice
        return as_instanceof_cause(function_name, user_traceback(exc), exc, proctitle)


# Frames of these packages are the machinery around the user's code: not shown (as Ray shows
# only the user's frames under its "ray::f()" line).
_MACHINERY = tuple(
    os.path.dirname(module.__file__ or "") + os.sep for module in (sys.modules[__package__],)
)


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as Ray shows it: the user's frames, then the exception line."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(_MACHINERY + _dask_dirs())
    ]
    lines = traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _dask_dirs() -> tuple[str, ...]:
    out = []
    for name in ("distributed", "dask"):
        module = sys.modules.get(name)
        if module is not None and module.__file__:
            out.append(os.path.dirname(module.__file__) + os.sep)
    return tuple(out)


_dual_classes: dict[type, type[RayTaskError]] = {}


def _dual_class(cause_cls: type) -> type[RayTaskError]:
    """``RayTaskError(cause_cls)``: a class that is both, made once per cause class."""
    cls = _dual_classes.get(cause_cls)
    if cls is None:
        name = f"RayTaskError({cause_cls.__name__})"
        try:
            cls = type(name, (RayTaskError, cause_cls), {"__module__": __name__})
        except TypeError:
            # Some classes cannot be combined (layout conflicts, final classes): the plain
            # RayTaskError still carries the cause and its traceback.
            cls = RayTaskError
        _dual_classes[cause_cls] = cls
    return cls


def as_instanceof_cause(
    function_name: str, traceback_str: str, cause: BaseException | None, proctitle: str = ""
) -> RayTaskError:
    cls: type[RayTaskError] = (
        _dual_class(type(cause)) if isinstance(cause, Exception) else RayTaskError
    )
    try:
        # cls.__new__, not RayTaskError.__new__: OSError and its kin have their own __new__
        err: RayTaskError = cls.__new__(cls)
    except Exception:
        err = RayTaskError.__new__(RayTaskError)
    RayTaskError.__init__(err, function_name, traceback_str, cause, proctitle)
    return err


def _rebuild_task_error(
    function_name: str, traceback_str: str, cause: BaseException | None, proctitle: str
) -> RayTaskError:
    return as_instanceof_cause(function_name, traceback_str, cause, proctitle)


class GetTimeoutError(RayError, TimeoutError):
    """``get()`` waited ``timeout`` seconds and the value was not ready (``wait()`` returns
    what is ready instead of raising)."""


class TaskCancelledError(RayError):
    """The task was cancelled with ``cancel()`` before it produced this value.

    As Ray's: a pending (or force-cancelled) task's error says nothing more; a running task
    that ``cancel()`` interrupted fails with ``RayTaskError(TaskCancelledError)``, whose cause
    reads ``Task: <key> was cancelled.``.
    """

    def __init__(self, task_id: str | None = None, error_message: str | None = None) -> None:
        self.task_id = task_id
        self.error_message = error_message
        super().__init__(*(a for a in (task_id, error_message) if a is not None))

    def __str__(self) -> str:
        msg = f"Task: {self.task_id} was cancelled. " if self.task_id else ""
        return msg + (self.error_message or "")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.task_id, self.error_message)


class WorkerCrashedError(RayError):
    """The worker running the task died and the task had no retries left."""


class ObjectLostError(RayError):
    """The value's only copy was on a worker that is gone and it could not be recomputed."""


class PendingCallsLimitExceeded(RayError):
    """An actor handle already has ``max_pending_calls`` calls without their result."""


class RaySystemError(RayError):
    """The cluster itself failed: daskgen lost its connection to the Dask scheduler."""


class RayActorError(RayError):
    """An actor could not run the call."""


class ActorDiedError(RayActorError):
    """The actor was killed, or the worker hosting it died."""


class ActorUnavailableError(RayActorError):
    """The actor is being restarted (``max_restarts``): a call in flight may or may not have
    run; calls made after it is back run on the new instance."""


class ActorAlreadyExistsError(ValueError, RayError):
    """An actor was created with ``name=`` that a live actor already has (no
    ``get_if_exists=True``)."""


# Ray's tree, for ``except`` clauses written for Ray; their bases are Ray's.


class OutOfMemoryError(RayError):
    """The worker running the task was ended for using too much memory (Dask's nanny ends a
    worker past ``distributed.worker.memory.terminate`` of its memory limit) and the task's
    retries ran out."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ObjectStoreFullError(RayError):
    """No room for a value (Ray's object store)."""


class OutOfDiskError(RayError):
    """No disk left for spilling."""


class NodeDiedError(RayError):
    """The worker running the task was lost with its nanny (its host, or the whole
    ``dask worker`` process group, is gone) and the task's retries ran out."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class LocalRayletDiedError(RayError):
    """The local node manager died (Ray's raylet)."""


class OwnerDiedError(ObjectLostError):
    """The process that owned a value died."""


class ObjectFetchTimedOutError(ObjectLostError):
    """A value could not be fetched in time."""


class ObjectReconstructionFailedError(ObjectLostError):
    """A lost value could not be computed again."""


class ObjectFreedError(ObjectLostError):
    """A value was freed before it was read."""


class TaskUnschedulableError(RayError):
    """A task can never be placed: the node its ``NodeAffinitySchedulingStrategy(...,
    soft=False)`` names does not exist (any more)."""

    def __init__(self, error_message: str = "") -> None:
        super().__init__(error_message)
        self.error_message = error_message

    def __str__(self) -> str:
        return f"The task is not schedulable: {self.error_message}"


class ActorUnschedulableError(RayError):
    """An actor can never be placed: the node its ``NodeAffinitySchedulingStrategy(...,
    soft=False)`` names does not exist, or its placement group was not created in time."""

    def __init__(self, error_message: str = "") -> None:
        super().__init__(error_message)
        self.error_message = error_message

    def __str__(self) -> str:
        return f"The actor is not schedulable: {self.error_message}"


class RuntimeEnvSetupError(RayError):
    """A ``runtime_env`` could not be set up."""


class AsyncioActorExit(RayError):
    """An asynchronous actor exited."""


class CrossLanguageError(RayError):
    """A value crossed languages (Ray's Java and C++ workers; none here)."""


class TaskPlacementGroupRemoved(RayError):
    """The task's placement group was removed before the task started."""

    def __str__(self) -> str:
        return "The placement group corresponding to this task has been removed."


class ActorPlacementGroupRemoved(RayError):
    """The actor's placement group was removed."""

    def __str__(self) -> str:
        return "The placement group corresponding to this Actor has been removed."


class RayChannelError(RaySystemError):
    """A channel between processes failed (Ray's compiled graphs)."""


# --------------------------------------------------------------------- Dask's errors, as Ray's

# Dask's reason for cancelling every future when its client loses the scheduler.
SCHEDULER_LOST = "scheduler-connection-lost"
# daskgen's reason for cancelling tasks no worker can run (the rest of the reason says why).
NO_WORKER_REASON = "daskgen-no-worker: "
# daskgen's reason for cancelling the tasks of a removed placement group.
PG_REMOVED_REASON = "daskgen-pg-removed: "

# Why workers left, as the scheduler's daskgen plugin told this process (``WORKER_LOST_OP``):
# address -> (kind, message), kind "memory" (its nanny ended it) or "node" (nanny and all).
# Kept for the last few hundred workers only.
lost_workers: dict[str, tuple[str, str]] = {}
_LOST_KEPT = 500


# Set by the client layer: ask the scheduler why a worker left (records it with worker_lost).
why_lost: Any = None


def worker_lost(worker: str, kind: str, message: str) -> None:
    """Record why ``worker`` left (the clients' handler of ``daskgen-worker-lost``)."""
    lost_workers.pop(worker, None)
    lost_workers[worker] = (kind, message)
    while len(lost_workers) > _LOST_KEPT:
        del lost_workers[next(iter(lost_workers))]


def translate(exc: BaseException) -> BaseException:
    """The error daskgen raises for what Dask reported (``exc`` itself if it is Ray's already)."""
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    if isinstance(exc, RayTaskError):
        return exc
    if isinstance(exc, FutureCancelledError) and str(exc.reason).startswith(NO_WORKER_REASON):
        return WorkerCrashedError(str(exc.reason)[len(NO_WORKER_REASON) :])
    if isinstance(exc, FutureCancelledError) and str(exc.reason).startswith(PG_REMOVED_REASON):
        return TaskPlacementGroupRemoved()
    if isinstance(exc, FutureCancelledError) and exc.reason == SCHEDULER_LOST:
        return RaySystemError(
            f"Lost the connection to the Dask scheduler, so the value of {exc.key} cannot be "
            f"had: {exc.msg or exc.reason}"
        )
    if isinstance(exc, (FutureCancelledError, asyncio.CancelledError)):
        return TaskCancelledError()  # as Ray says of a task cancelled before it ran
    if isinstance(exc, KilledWorker):
        return _worker_died(exc)
    return exc


def fresh(exc: BaseException) -> BaseException:
    """A new copy of ``exc`` to raise (each ``get`` raises its own, as Ray's does).

    Never raise the exception object Dask keeps in a future's state: raising it hangs the
    raising frames (and the future) on its traceback, and so keeps the key for ever.
    """
    if isinstance(exc, RayTaskError):
        return exc.as_instanceof_cause()
    try:
        copied = copy.copy(exc)
    except Exception:
        return exc
    copied.__traceback__ = None
    return copied


def _worker_died(exc: Any) -> RayError:
    """Ray's error for a task whose last worker died (Dask's ``KilledWorker``): by why that
    worker left, as the scheduler's plugin reported it (``lost_workers``): its nanny ended it
    for memory (``OutOfMemoryError``), it went with its nanny, as a host does
    (``NodeDiedError``), else its process died (``WorkerCrashedError``)."""
    last = getattr(getattr(exc, "last_worker", None), "address", None)
    if last and last not in lost_workers and why_lost is not None:
        why_lost(last)  # the verdict may still be on its way
    kind, message = lost_workers.get(last or "", ("", ""))
    if kind == "memory":
        return OutOfMemoryError(
            f"Task was killed due to the node running low on memory.\n{message} The task's "
            f"retries ran out: {exc}"
        )
    if kind == "node":
        return NodeDiedError(f"{message} The task's retries ran out: {exc}")
    return WorkerCrashedError(f"The worker running the task died and its retries ran out: {exc}")
