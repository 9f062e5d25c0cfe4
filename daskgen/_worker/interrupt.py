"""Stopping a running task, as Ray's ``cancel()`` does: the worker half (runs in worker processes).

Dask's ``cancel`` forgets a task but cannot stop a thread that runs it: the thread goes on, and
holds its worker slot until it returns (later tasks starve). Ray raises ``KeyboardInterrupt``
inside the task instead, and with ``force=True`` ends the worker process. daskgen does:

* While a daskgen task runs the user's code, its thread is registered here (:func:`running`).
* ``cancel(ref)`` first cancels the task in Dask (a pending task then never runs), then runs
  :func:`interrupt` on the worker that was running it (``Client.run``), which raises
  ``KeyboardInterrupt`` in that thread (``PyThreadState_SetAsyncExc``: at its next Python
  bytecode, so its ``finally`` blocks run). The task then ends as cancelled and its thread is
  free. A task the interrupt reaches before it started is remembered, and stops as it starts.
* ``force=True`` also takes the thread out of the worker's pool at once (as ``secede`` does),
  so its slot and CPU serve the next task, and raises :class:`ForceCancelled` in it again every
  ``FORCE_REPEAT_S`` until it ends: catching ``KeyboardInterrupt`` or ``Exception`` does not
  keep it alive. A thread blocked in C code (``time.sleep``, a socket) stops when that call
  returns. The worker process is never killed, so no other task's data is lost; Ray's way
  (ending the process) would lose every value that worker holds.
* ``recursive=True``: the tasks a cancelled task submitted are cancelled the same way.

Only the user's code is interruptible: the exception never lands in daskgen's or Dask's own
bookkeeping around it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .. import _dask_internals as dx
from .. import _runtime
from .._protocol import Key, cancel_message
from .._waiting import TaskThread, current, set_current
from ..exceptions import TaskCancelledError

logger = logging.getLogger("daskgen")

FORCE_REPEAT_S = 0.05  # how often a force-cancelled thread gets the exception again
STUCK_WARNING_S = 10.0  # warn once if a force-cancelled thread is still alive after this
_TOMBSTONES = 10_000  # cancelled keys remembered, for tasks the interrupt reached too early


class ForceCancelled(BaseException):
    """Raised, repeatedly, in a task cancelled with ``force=True`` (not a ``KeyboardInterrupt``
    or an ``Exception``, so the usual ``except`` clauses do not swallow it)."""


class _Running(TaskThread):
    """A running task's thread (its ``cancelled`` flag and wakers: see ``_waiting``)."""

    __slots__ = ("ident", "interruptible", "forced", "detached", "since")

    def __init__(self, ident: int, interruptible: bool) -> None:
        super().__init__()
        self.ident = ident
        self.interruptible = interruptible  # in the user's code now (see user_code)
        self.forced = False
        self.detached = False
        self.since = 0.0


_lock = threading.Lock()
_running: dict[Key, _Running] = {}
_tombstones: collections.OrderedDict[Key, None] = collections.OrderedDict()
_children: dict[Key, list[Key]] = {}  # task -> tasks it submitted (for recursive=True)
_force_hooks: dict[Key, Callable[[], None]] = {}  # calls outside Dask's pool (see force_hook)


def was_cancelled(key: Key) -> bool:
    """Whether an interrupt for ``key`` reached this process (before or while it ran)."""
    with _lock:
        return key in _tombstones


@contextlib.contextmanager
def running(key: Key, interruptible: bool = True) -> Iterator[_Running]:
    """Around a task in its thread: the exception lands only while ``entry.interruptible``
    (the whole block by default; a generator task marks its steps with :func:`user_code`).

    Raises ``TaskCancelledError`` at once if the task was cancelled before it started.
    """
    entry = _Running(threading.get_ident(), interruptible)
    with _lock:
        if key in _tombstones:
            raise TaskCancelledError()  # cancelled before it started: it never runs
        _running[key] = entry
    outer = set_current(entry)
    try:
        yield entry
    finally:
        set_current(outer)
        with _lock:
            if _running.get(key) is entry:
                del _running[key]
            if entry.cancelled:
                _set_async_exc(entry.ident, None)  # one sent just now must not land later
            _children.pop(key, None)


@contextlib.contextmanager
def force_hook(key: Key, hook: Callable[[], None]) -> Iterator[None]:
    """Around a call that runs outside Dask's thread pool (``_worker.direct``): ``hook()`` (on
    the worker's loop) when ``cancel(force=True)`` reaches it, to free the slot it holds, as
    taking a pool thread out of the pool does for a task Dask runs."""
    with _lock:
        _force_hooks[key] = hook
    try:
        yield
    finally:
        with _lock:
            _force_hooks.pop(key, None)


def user_code(steps: Iterator[Any]) -> Iterator[Any]:
    """``steps`` (a generator's values), each step interruptible, the code between not.

    Without a running task in this thread, ``steps`` as they are. A cancel that comes while
    daskgen publishes a value stops the generator as it takes its next step.
    """
    entry = current()
    if not isinstance(entry, _Running):
        yield from steps
        return
    while True:
        entry.interruptible = True
        try:
            if entry.cancelled:
                raise KeyboardInterrupt
            box = [next(steps)]
        except StopIteration:
            _leave_user_code(entry)
            return
        except BaseException:
            _leave_user_code(entry)
            raise
        _leave_user_code(entry)
        # Emptied as it is handed over: this frame, paused here, must not keep the value
        # alive (the generator never holds past values).
        yield box.pop()


def _leave_user_code(entry: _Running) -> None:
    with _lock:
        entry.interruptible = False
        if not entry.cancelled:
            return
        _set_async_exc(entry.ident, None)  # not in daskgen's code: raised here instead
    raise ForceCancelled if entry.forced else KeyboardInterrupt


def record_child(parent: Key, child: Key) -> None:
    """``child`` was submitted from task ``parent`` (cancelled with it when recursive)."""
    with _lock:
        if parent in _running:
            _children.setdefault(parent, []).append(child)


def interrupt_all(
    keys: list[Key], force: bool, recursive: bool, dask_worker: Any = None
) -> list[bool]:
    """Run by ``Client.run`` on the worker's loop: :func:`interrupt` each key."""
    return [interrupt(key, force, recursive, dask_worker) for key in keys]


def interrupt(key: Key, force: bool, recursive: bool, dask_worker: Any = None) -> bool:
    """On the worker's loop: stop task ``key`` if it runs here; remember it if not (yet).

    Returns whether it was running here.
    """
    with _lock:
        _tombstones[key] = None
        if len(_tombstones) > _TOMBSTONES:
            _tombstones.popitem(last=False)
        entry = _running.get(key)
        children = _children.pop(key, []) if recursive else []
        if entry is not None:
            entry.cancelled = True
            entry.forced = entry.forced or force
            if entry.interruptible:
                _set_async_exc(entry.ident, ForceCancelled if force else KeyboardInterrupt)
            wakers = list(entry.wakers)
            if force and dask_worker is not None and not entry.detached:
                # Under the lock: the task cannot end (and its thread go back to the pool)
                # between the check that it runs and taking its thread out of the pool.
                entry.detached = dx.worker_detach_thread(dask_worker, key, entry.ident)
        hook = _force_hooks.pop(key, None) if force else None
    if hook is not None:
        hook()
    if entry is not None:
        for waker in wakers:
            waker()
    if children and dask_worker is not None:
        # Not on this loop: cancelling waits for the scheduler, which this loop also serves.
        threading.Thread(
            target=_cancel_children, args=(dask_worker, children, force), daemon=True
        ).start()
    if entry is None or not force or dask_worker is None:
        return entry is not None
    entry.since = dask_worker.loop.time()
    dask_worker.loop.call_later(FORCE_REPEAT_S, _repeat, dask_worker, key, entry)
    return True


def _repeat(worker: Any, key: Key, entry: _Running) -> None:
    with _lock:
        if _running.get(key) is not entry:
            return  # it ended
        if entry.interruptible:
            _set_async_exc(entry.ident, ForceCancelled)
    if entry.since and worker.loop.time() - entry.since > STUCK_WARNING_S:
        entry.since = 0.0  # warn once
        logger.warning(
            "daskgen: task %s was cancelled with force=True %.0f s ago and its thread still "
            "runs (blocked in C code, or catching every exception). Its worker slot is free; "
            "the thread stops at its next Python instruction.",
            key,
            STUCK_WARNING_S,
        )
    worker.loop.call_later(FORCE_REPEAT_S, _repeat, worker, key, entry)


def finish_detached(worker: Any, key: Key, entry: _Running) -> None:
    """In a force-cancelled task's thread, as it ends: leave the pool for good and give the
    task's resources back to Dask's own accounting (see ``dx.worker_detach_thread``)."""
    if entry.detached:
        dx.worker_thread_leaves_pool()
        worker.loop.add_callback(dx.worker_lend_resources, worker, key, -1)


def _cancel_children(worker: Any, children: list[Key], force: bool) -> None:
    try:
        msg = cancel_message(
            children, force=force, recursive=True, revoke=False, reason="its parent was cancelled"
        )
        _runtime.send(dx.worker_client(worker), msg)
    except Exception:
        logger.warning("daskgen: could not cancel the tasks %s submitted", children, exc_info=True)


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in thread ``ident`` at its next bytecode (None: withdraw a pending one)."""
    if _AT_LINE_STARTS:
        _at_line_start(ident, exc)
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
    )


# CPython 3.13 delivers an exception set by ``PyThreadState_SetAsyncExc`` at a loop's backward
# jump as if it came from outside the enclosing ``try`` (cpython#139622): the task's own
# ``except``/``finally`` are skipped. There, the exception is raised instead by a
# ``sys.monitoring`` callback at the thread's next line start, which Python attributes to that
# line; the LINE event is on only while an exception waits. A thread that starts no new line
# within :data:`LINE_WAIT_S` (a one-line loop, C code) gets ``PyThreadState_SetAsyncExc``.
_AT_LINE_STARTS = sys.version_info[:2] == (3, 13)
LINE_WAIT_S = 0.2
_waiting_at_line: dict[int, type[BaseException]] = {}
_monitoring_tool: int | None = None


def _at_line_start(ident: int, exc: type[BaseException] | None) -> None:
    monitoring = sys.monitoring  # type: ignore[attr-defined]
    global _monitoring_tool
    if exc is None:
        _waiting_at_line.pop(ident, None)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        return
    if _monitoring_tool is None:
        for tool in (3, 4):
            if monitoring.get_tool(tool) is None:
                monitoring.use_tool_id(tool, "daskgen-interrupt")
                monitoring.register_callback(tool, monitoring.events.LINE, _on_line)
                _monitoring_tool = tool
                break
        else:  # both free tool ids taken (by a debugger, say): the interpreter's own way
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
            return
    _waiting_at_line[ident] = exc
    monitoring.set_events(_monitoring_tool, monitoring.events.LINE)
    timer = threading.Timer(LINE_WAIT_S, _not_at_a_line, (ident, exc))
    timer.daemon = True
    timer.start()


def _on_line(code: Any, line: int) -> Any:
    """``sys.monitoring``'s LINE callback, in whichever thread starts a line."""
    exc = _waiting_at_line.pop(threading.get_ident(), None)
    if not _waiting_at_line and _monitoring_tool is not None:
        sys.monitoring.set_events(_monitoring_tool, 0)  # type: ignore[attr-defined]
    if exc is not None:
        raise exc


def _not_at_a_line(ident: int, exc: type[BaseException]) -> None:
    if _waiting_at_line.get(ident) is exc:
        del _waiting_at_line[ident]
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
