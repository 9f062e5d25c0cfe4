"""What a thread that runs a task does while it waits for other work: leave the worker's thread
pool, and stay interruptible by ``cancel()``. Used wherever daskgen blocks (``get``, ``wait``,
``next`` on a generator, a paused producer), in the driver (where it does nothing) and in tasks.

A task cancelled while it waits must stop now, not when its wait ends: Dask's ``sync`` looks
only every 10 s whether its thread should go on, and a condition wait may last for ever. So
``_worker.interrupt`` registers, for each task's thread, a :class:`TaskThread` here; a wait in
that thread registers how to wake it (:func:`wakes`), and an interrupt calls those wakers after
raising its exception in the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from distributed import rejoin, secede

from . import _dask_internals as dx
from ._runtime import in_worker_task

_thread = threading.local()  # .task: the TaskThread of this thread's task; .seceded


class TaskThread:
    """A task's thread, as the waits in it see it."""

    __slots__ = ("cancelled", "wakers")

    def __init__(self) -> None:
        self.cancelled = False
        self.wakers: list[Callable[[], None]] = []


def current() -> TaskThread | None:
    return getattr(_thread, "task", None)


def set_current(task: TaskThread | None) -> TaskThread | None:
    """Make ``task`` this thread's task; return the one it replaces."""
    outer = current()
    _thread.task = task
    return outer


def current_task_cancelled() -> bool:
    """Whether the task this thread runs was interrupted by ``cancel()``."""
    task = current()
    return task is not None and task.cancelled


@contextlib.contextmanager
def blocking() -> Iterator[None]:
    """Around a wait inside a task: leave the worker's thread pool and lend back its resources.

    Without this, tasks blocked on other tasks hold every thread and CPU and the worker deadlocks
    (Ray also releases a task's CPU while it waits in ``get``). No-op outside tasks.
    """
    if getattr(_thread, "seceded", False):
        yield
        return
    lender = getattr(_thread, "lender", None)
    if lender is not None:  # a direct call's thread (``_worker.direct``): its slot, lent back
        lender(+1)
        _thread.seceded = True
        try:
            yield
        finally:
            _thread.seceded = False
            lender(-1)
        return
    worker = in_worker_task()
    key = dx.worker_current_key(worker) if worker is not None else None
    if key is None:
        yield
        return
    assert worker is not None
    worker.loop.add_callback(dx.worker_lend_resources, worker, key, +1)
    secede()
    _thread.seceded = True
    try:
        yield
    finally:
        _thread.seceded = False
        # A task cancel() interrupted is on its way out: it ends outside the pool (as Dask
        # lets a seceded task do) rather than wait for a thread its own children may hold.
        if not current_task_cancelled():
            rejoin()
        worker.loop.add_callback(dx.worker_lend_resources, worker, key, -1)


def set_slot_lender(lender: Callable[[int], None] | None) -> None:
    """In a thread that holds a worker's task slot outside Dask's pool (``_worker.direct``):
    how a wait in it lends the slot back (``lender(+1)``) and takes it again (``lender(-1)``),
    as ``blocking`` does with a pool thread's. None: the thread holds none any more."""
    _thread.lender = lender


@contextlib.contextmanager
def wakes(waker: Callable[[], None]) -> Iterator[None]:
    """Around a blocking daskgen wait in a task's thread: an interrupt calls ``waker`` (from
    another thread) so that the wait returns and the exception lands at once."""
    task = current()
    if task is None:
        yield
        return
    task.wakers.append(waker)
    try:
        if task.cancelled:
            waker()  # the interrupt came before the waker was there
        yield
    finally:
        task.wakers.remove(waker)


def sync(client: Any, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``client.sync(fn, *args)``, cut short by an interrupt of the task this thread runs."""
    if current() is None:
        return client.sync(fn, *args)
    loop = client.loop
    started: list[asyncio.Task[Any]] = []

    async def run() -> Any:
        started.append(asyncio.current_task())  # type: ignore[arg-type]
        return await fn(*args)

    def wake() -> None:
        loop.add_callback(lambda: [task.cancel() for task in started])

    with wakes(wake):
        return client.sync(run)
