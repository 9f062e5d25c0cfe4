"""A call's large arguments, stored as a key of their own on the submitter's side of the cluster
and passed to the task as a dependency (as Ray stores an argument over ~100 KiB in the
submitter's object store and passes a reference). Runs in the caller's process.

Why: packed into the task (``_protocol.Packed``), a call's 10 MB array crossed the scheduler
inside each task's message (client -> scheduler -> worker, ~35-45 ms a call here: 200 calls
took 6.9-9 s, Ray 2.3 s). Stored, the scheduler sees a small task with one dependency, and Dask
runs the task where that dependency is (its ``decide_worker`` picks among the workers holding
a task's dependencies), so the bytes cross no process beyond the one they were handed to.

* From the driver (any process outside a task), the pickled arguments go over the wire of
  ``actor_channel`` (Dask's comm layer on TLS clusters) to a worker able to run the task, in
  turn: the worker keeps them as they came (``actor_host``'s ``store``) and publishes them as
  a key held by this client, as a promoted actor result is. The call is submitted once the
  scheduler has announced that key (``_objects.promotion``: the submission waits for it on
  the client's loop, never the caller's thread).
* From inside a task, they stay on that task's own worker (published from its loop): a child
  task runs where its parent's data is.
* The key is freed by Dask's refcounting: the call keeps its ref only until the task has run
  (a generator's until it ends), and the scheduler frees a key nobody wants once its
  dependents are done.
* A worker that cannot take them (its connection fails, it left) costs nothing but time: the
  call then goes with its arguments packed into the task, as smaller ones do. A worker that
  dies holding them before the task ran makes Dask forget the task too: the call stores them
  again and submits its task anew (``remote_function._Call.restore``), as often as the
  call's ``max_retries`` allows (the task may have been running on that worker).

Semantics stay Ray's: the task receives the value, never a ref, as it was at the call. A NumPy
array's memory is not copied first (~0.9 s of the 200 x 10 MB calls above, most of it page
faults of fresh memory): it is written from the caller's buffer while ``.remote()`` runs, so
the kernel has it when the call returns; where it must wait (the connection still opening), it
is copied. The task gets arrays on the stored buffers, read-only (every task on that worker
shares them; Ray's are read-only too), any other value unpickled as its own copy. One window
is left: arguments stored again after their worker died are the caller's buffers as they are
then, so an array changed after the call gives the re-run the changed values (Ray's copy sits
in the node's object store, which a worker process's death does not touch).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from typing import Any

from distributed import Client

from .. import _dask_internals as dx
from .. import _runtime
from .._objects import promotion
from .._objects.refs import ObjectRef
from .._options import worker_fits
from .._protocol import WORKERS_OP, Key, Packed, stored_args_key
from .._worker.publish import publish_value
from .actor_channel import channel, closed_under_us
from .arguments import snapshot

WORKERS_FRESH_S = 2.0  # s: how long the list of workers asked from the scheduler is used

stored = 0  # calls whose arguments this process stored (tests look)

# Per client (weakly: a client's id may be reused by the next one): when its list of workers
# was read, and the list.
_workers: weakref.WeakKeyDictionary[Client, tuple[float, list[tuple[str, dict[str, float]]]]] = (
    weakref.WeakKeyDictionary()
)
_turns = itertools.count()
_lock = threading.Lock()


def store(client: Client, packed: Packed, resources: dict[str, float] | None) -> ObjectRef | None:
    """Store ``packed`` (a call's arguments) on the submitter's side; the ref to its key, or
    None where it cannot be (the call then packs its arguments into the task)."""
    global stored
    worker = _runtime.in_worker_task()
    key = stored_args_key()
    if worker is not None:
        ref = ObjectRef(dx.light_future(key, client))  # before the announcement can come
        promotion.own(key, _Here(worker), publishing=True)
        worker.loop.add_callback(_store_here, worker, client.id, key, snapshot(packed))
        stored += 1
        return ref
    if client.asynchronous or dx.on_loop_thread(client):
        return None  # the worker list would have to be waited for on the loop
    address = _next_worker(client, resources or {})
    if address is None:
        return None
    ch = channel(client, address)
    ref = ObjectRef(dx.light_future(key, client))
    promotion.own(key, ch, publishing=True)
    ch.store(key, packed)  # announced maybe before it returns
    stored += 1
    return ref


def _next_worker(client: Client, resources: dict[str, float]) -> str | None:
    """The next worker in turn among those able to run daskgen's tasks and to hold the task's
    ``resources`` (the task can then run where its arguments are)."""
    now = time.monotonic()
    with _lock:
        known = _workers.get(client)
    if known is None or now - known[0] > WORKERS_FRESH_S:
        try:
            found = client.sync(getattr(client.scheduler, WORKERS_OP))
        except Exception:
            return None
        known = (now, sorted(found["able"].items()))
        with _lock:
            _workers[client] = known
    able = [
        address
        for address, declared in known[1]
        if address not in closed_under_us and worker_fits(resources, declared)
    ]
    return able[next(_turns) % len(able)] if able else None


def _store_here(worker: Any, caller: str, key: Key, packed: Packed) -> None:
    """On the worker's loop: keep the arguments here, and publish them for ``caller``."""
    dx.worker_store(worker, {key: packed})
    publish_value(worker, caller, key, packed)


class _Here:
    """The owner (``_objects.promotion``) of arguments stored on this task's own worker until
    the scheduler announces them. Nothing to do on release: the announcement of a key nobody
    holds any more frees it (``genstate.on_yield_message``)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def send(self, msg: dict[str, Any]) -> None:
        pass

    def completed(self, key: Key) -> None:
        pass

    def released(self, key: Key) -> None:
        pass
