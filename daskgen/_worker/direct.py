"""Plain task calls sent straight to this worker by their caller: the worker half (runs in the
worker processes; ``_client.direct`` is the caller's half and says when a call goes this way).

Why: a task submitted through Dask's scheduler crosses three processes before its result is
back (caller -> scheduler -> worker -> caller, each a message on a batched stream), ~4-6 ms
here; Ray sends a task straight to a worker it leased. A caller with no other direct call in
flight sends a plain call on the connection it holds to its leased worker (the actor wire, see
``actor_host``) and, at the same time, submits it to the scheduler as a Dask task restricted
to this worker.

* The call starts at once if it takes one of the worker's task slots
  (``dx.worker_take_slot``: Dask's state machine counts one thread fewer meanwhile, so no other
  task starts in that slot). None free, or tasks waiting for one: ``busy``; its Dask task, if
  it came first: ``late``. Either way that task runs the call, as any task. A task the
  scheduler sent here before it heard of the call (they crossed) does not wait behind it: the
  call gives its slot back and runs on (``_make_room``).
* It runs in a thread of daskgen's own as a Dask task's function does (the same
  ``run.TaskSpec``: its errors, ``cancel()``'s interrupt (the scheduler finds the task on this
  worker), output forwarding, its job's namespace, nested calls, and ``get`` inside it, which
  lends the slot back while it waits). Its small result goes straight back to the caller.
* Its Dask task does not run the function again, here or elsewhere (this worker refuses Dask's
  work stealing for it: ``dx.worker_refuse_steals``). The call's value is put in this worker's
  memory before the task's ``compute-task`` comes (Dask then answers ``task-finished`` at once,
  with the call's start and stop: the task stream shows the run), or, if the task came while
  the call ran, the task waits for the call and returns its value (``DirectCall.claim``).
* A worker that dies under it: Dask runs the task elsewhere, from the start, as after any
  worker's death (``max_retries``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .. import _dask_internals as dx
from .. import _runtime
from .._job import Job
from .._protocol import ErrorValue, Key, as_key, boxed
from .._runtime import current_call, current_job, current_resources
from .._waiting import blocking, set_slot_lender
from ..exceptions import RaySystemError
from .interrupt import force_hook
from .output import origin_for, task_origin
from .publish import inline_bytes
from .run import check_scheduler, served, spec_from_blob

logger = logging.getLogger("daskgen")

WATCH = "daskgen-direct-slots"  # the worker's watch while direct calls hold slots (_make_room)
MAX_THREADS = 256  # threads are made only when none is idle (see _pool)
UNCLAIMED_S = 60.0  # s: a direct result Dask never came for, after its caller left

_pools: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_claimed: collections.deque[Key] = collections.deque(maxlen=64)  # recent claims (``claim``)
# Values of direct calls put in memory before their Dask task came, key -> the caller's stream
# (in the order they ran): forgotten if it never comes (see ``caller_left``).
_waiting: dict[Key, Any] = {}
_pools_lock = threading.Lock()


class DirectCall:
    """One call accepted here: its slot, and its value once it ran."""

    __slots__ = ("stream", "key", "slot", "done", "value", "start", "stop")

    def __init__(self, stream: Any, key: Key) -> None:
        self.stream = stream
        self.key = key
        # one of the worker's task slots: "held", "lent" (while it waits in get) or "none"
        # (given back: it ended, cancel(force=True) reached it, or a task the scheduler sent
        # here needed it: ``_make_room``)
        self.slot = "held"
        self.done = threading.Event()
        self.value: Any = None
        self.start = self.stop = 0.0  # when it ran (``time.time()``)

    def claim(self) -> Any:
        """In the call's Dask task (``run.TaskSpec``): its value, once it ran (waiting outside
        the worker's pool meanwhile)."""
        if not self.done.is_set():
            with blocking():
                self.done.wait()
        served.pop(self.key, None)
        _claimed.append(self.key)  # its task ends now: it holds no slot (``is_direct``)
        return self.value


def is_direct(key: Key) -> bool:
    """Whether ``key`` is a direct call run (or running) here: its Dask task ends at once."""
    return key in served or key in _claimed


def start(stream: Any, msg: dict[str, Any]) -> None:
    """On the worker's loop: run the call in ``msg`` ({key, spec, packed, owner, job,
    resources}) now if a slot is free; else answer ``busy``, or ``late`` if its Dask task came
    first (that task runs it here, as any task)."""
    key = as_key(msg["key"])
    worker = stream.worker
    if key in worker.state.tasks:  # its Dask task came first (a connection still opening)
        stream.send({"op": "late", "key": key})  # that task runs the call
        return
    if not dx.worker_take_slot(worker, is_direct):
        stream.send({"op": "busy", "key": key})
        return
    dx.worker_on_task_waiting(worker, WATCH, lambda: _task_waits(worker))
    dx.worker_refuse_steals(worker, _runs_here)
    call = served[key] = DirectCall(stream, key)
    # On Dask's comm layer (no actor wire: TLS), msgpack hands the job over as a plain tuple.
    job = msg["job"] if isinstance(msg["job"], Job) else Job(*msg["job"])
    args = (msg["spec"], msg["packed"], msg.get("owner"), job, msg.get("resources"))
    _pool(worker).submit(_run, worker, call, *args)


def _runs_here(key: Key) -> bool:
    """A direct call's Dask task must end here, with the call's value (``claim``): Dask's work
    stealing would run the function again on another worker."""
    return key in served or key in _waiting


def caller_left(stream: Any) -> None:
    """On the loop: ``stream``'s caller is gone. Values its Dask tasks never came for (it
    died before submitting them) are dropped after :data:`UNCLAIMED_S`."""
    keys = [key for key, call in served.items() if call.stream is stream]
    keys += [key for key, owner in _waiting.items() if owner is stream]
    if keys:
        stream.worker.loop.call_later(UNCLAIMED_S, _drop, stream.worker, keys)


def _drop(worker: Any, keys: list[Key]) -> None:
    for key in keys:
        call = served.get(key)
        if call is not None and call.done.is_set():
            del served[key]
        if _waiting.pop(key, None) is not None and dx.worker_key_asked(worker, key) is False:
            dx.worker_forget(worker, [key])


def _pool(worker: Any) -> Any:
    """The threads direct calls run in (made on first use): one per slot at most, plus those
    of force-cancelled calls still stuck in C code (their slots are free again)."""
    with _pools_lock:
        pool = _pools.get(worker)
        if pool is None:
            pool = _pools[worker] = concurrent.futures.ThreadPoolExecutor(
                MAX_THREADS, thread_name_prefix="daskgen-direct"
            )
        return pool


def _run(
    worker: Any,
    call: DirectCall,
    spec_blob: Any,
    packed: Any,
    owner: str | None,
    job: Any,
    resources: dict[str, float] | None,
) -> None:
    """In a thread of the pool: the call, then its small result straight back."""
    lend: Callable[[int], None] = lambda sign: worker.loop.add_callback(  # noqa: E731
        _lend, worker, call, sign
    )
    set_slot_lender(lend)
    call.start = time.time()
    try:
        with dx.as_worker_thread(worker):
            check_scheduler(worker)  # before anything of daskgen's goes to the scheduler
            spec = spec_from_blob(spec_blob).load(job.env)
            origin = task_origin.set(origin_for(owner, spec.name, worker))
            token = current_call.set(str(call.key))
            holds = current_resources.set(dict(resources or {}))
            job_token = current_job.set(job)
            _runtime.current_placement.set(None)  # a pool thread runs one call after another
            try:
                with force_hook(call.key, lambda: _give_back_slot(worker, call)):
                    value = spec.run_direct(worker, call.key, packed)
            finally:
                current_job.reset(job_token)
                current_resources.reset(holds)
                current_call.reset(token)
                task_origin.reset(origin)
    except BaseException as exc:  # daskgen's own failure around the call
        logger.exception("daskgen: direct call %r failed", call.key)
        value = ErrorValue(RaySystemError(f"The task {call.key!r} failed on its worker: {exc!r}"))
    finally:
        set_slot_lender(None)
    call.stop = time.time()
    blob = inline_bytes(value)  # pickled here, off the worker's loop
    call.value = value if blob is not None else boxed(value)  # a large list: one pickle (Put)
    call.done.set()  # its Dask task may take it now
    worker.loop.add_callback(_ended, worker, call)
    if blob is not None:
        call.stream.send({"op": "result", "key": call.key, "blob": blob})
    else:  # large: the caller takes it from the Dask task's result, as any task's
        call.stream.send({"op": "done", "key": call.key})


def _ended(worker: Any, call: DirectCall) -> None:
    """On the loop: the call ran. If its Dask task has not reached this worker yet, its value
    waits in the worker's memory, where that task finds it done (``task-finished`` at once,
    no thread, with the call's run times); else the task takes it as it runs (``claim``)."""
    _give_back_slot(worker, call)
    if served.get(call.key) is call and dx.worker_store_computed(
        worker, call.key, call.value, call.start, call.stop
    ):
        del served[call.key]
        _waiting[call.key] = call.stream
    while _waiting:  # forget those whose Dask task came (they arrive in order, mostly)
        key = next(iter(_waiting))
        if dx.worker_key_asked(worker, key) is False:
            break
        del _waiting[key]


def _give_back_slot(worker: Any, call: DirectCall) -> None:
    """On the loop: the call ended, or ``cancel(force=True)`` reached it (its thread stops at
    its next bytecode, see ``_worker.interrupt``): its slot serves other tasks now. With no
    call holding a slot here, the watch for tasks that would wait behind one goes: the
    worker's plugins are as before (a user's cluster keeps its workers as they were)."""
    if call.slot == "held":
        dx.worker_return_slot(worker)
    call.slot = "none"
    if not any(c.slot == "held" and c.stream.worker is worker for c in list(served.values())):
        dx.worker_stop_watching(worker, WATCH)


def _task_waits(worker: Any) -> None:
    """In the worker's state machine, as a task the scheduler sent becomes ready to run here:
    the direct calls holding slots whose own Dask task has not come yet were unknown to the
    scheduler when it placed that task (the call reaches the worker first; the scheduler's
    messages to the worker keep their order). The task must not wait behind them
    (``_make_room``, on the loop, once this message is handled)."""
    unknown = [
        call
        for call in list(served.values())  # a copy: a task's thread may take one out (claim)
        if call.slot == "held"
        and call.stream.worker is worker
        and dx.worker_key_asked(worker, call.key) is None
    ]
    if unknown:
        worker.loop.add_callback(_make_room, worker, unknown)


def _make_room(worker: Any, calls: list[DirectCall]) -> None:
    """On the loop: tasks the scheduler placed here before it knew of ``calls`` wait for the
    slots those hold. The calls give their slots back and run on, the worker running one
    thread more per call meanwhile (as after Dask's ``rejoin``); the next direct call here
    finds no slot and its caller lets this worker go. Else a task submitted first would wait
    for a call submitted after it (and a task waiting for that call's progress, for ever). A
    task the scheduler placed knowing of a call waits for its slot, as behind any task."""
    short = dx.worker_slots_short(worker, is_direct)
    for call in calls:
        if short <= 0:
            return
        if call.slot == "held":
            _give_back_slot(worker, call)
            short -= 1


def _lend(worker: Any, call: DirectCall, sign: int) -> None:
    """On the loop: the call's slot lent back while it waits (+1), taken again after (-1)."""
    if sign > 0 and call.slot == "held":
        dx.worker_return_slot(worker)
        call.slot = "lent"
    elif sign < 0 and call.slot == "lent":
        dx.worker_take_slot(worker, even_if_busy=True)  # at once, as ``rejoin`` does
        call.slot = "held"
