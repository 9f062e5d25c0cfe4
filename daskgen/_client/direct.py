"""Plain task calls sent straight to a worker, the caller's half (runs in the driver;
``_worker.direct`` is the worker's half).

When: a plain call (one result, no ``retry_exceptions``, at most one CPU, no placement or
``runtime_env`` asked for) made by the driver while none of its direct calls is in flight,
with arguments that hold no refs and are smaller than ``_protocol.STORED_ARGS``. That is the
call a sequential caller waits on (``get(f.remote(x))`` in a loop), where the scheduler's hops
are most of the wait; calls made while one is in flight (a burst, a ``wait`` loop) go through
Dask's scheduler alone, which spreads them over the cluster.

Where: the worker leased for this client, picked among those that can run daskgen's tasks
(fewest tasks per thread first) and kept while it takes the calls.

How: the call goes on the connection to that worker (the actor wire), and to the scheduler as
a Dask task under the same key, restricted to that worker (Dask's loose restriction: elsewhere
only if that worker is gone). The scheduler thus sees the worker's slot taken (no other task
is sent to wait behind the call), and the task is an ordinary Dask task for everything else:
refs, ``cancel()``, retries after a worker's death, the dashboard. On the worker the call
starts at once if a slot is free, its small result comes straight back, and its Dask task ends
with the call's value instead of running the function again. A worker with no free slot
answers ``busy``: the call then runs as its Dask task does; that worker is let go, and for
:data:`BUSY_BACKOFF_S` calls go through the scheduler alone. A task still waiting in the
client's batch (the embedded cluster's) loses its restriction to that worker and runs wherever
the scheduler places it; one already sent (a real cluster's) runs there once it has a slot,
unless Dask's work stealing moves it.

On the embedded cluster, whose scheduler shares the driver's process, a direct call's task
may wait :data:`TASK_DELAY_S` in the client's batch so that a sequential caller's tasks reach
the scheduler together; anything else the client sends first (another call, a cancel, a ref
leaving the process) sends them at once, in order (``batching.flush``).
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from typing import Any

from distributed import Client

from .. import _dask_internals as dx
from .. import _runtime
from .._objects.refs import ObjectRef, result_ref
from .._protocol import STORED_ARGS, WORKERS_OP, Key, task_key
from .._worker.run import TaskSpec
from . import batching
from .actor_channel import DIRECT, channel, closed_under_us
from .arguments import pack_args
from .install import ensure_served
from .output import owner_of_new_calls
from .runtime_env import call_job

BUSY_BACKOFF_S = 0.05  # s: after a worker answered busy, calls go through the scheduler
TASK_DELAY_S = 0.005  # s: a direct call's Dask task may wait that long for others to join it
ENABLED = True  # off: every call goes through the scheduler alone (benchmarks compare both)

_leases: weakref.WeakKeyDictionary[Client, str] = weakref.WeakKeyDictionary()
_backoff: weakref.WeakKeyDictionary[Client, float] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_submitting: set[Key] = set()  # direct calls sent whose Dask task is not submitted yet
_refused_keys: set[Key] = set()  # ... of them, those their worker answered busy for


def _refused(client: Client, key: Key) -> None:
    """The leased worker had no free slot for the call ``key`` (on the client's loop): let it
    go for a while; and the call's Dask task, if it still waits in the client's batch (the
    embedded cluster's few ms), may run on any worker, not only behind that worker's tasks.
    (A task already sent, on a real cluster, runs on the leased worker once it has a slot.)"""
    _backoff[client] = time.monotonic() + BUSY_BACKOFF_S
    _leases.pop(client, None)
    with _lock:
        if key in _submitting:  # its task is not in the batch yet: ``submit`` does it
            _refused_keys.add(key)
            return
    batching.unrestrict(client, key)


def _connection_lost(client: Client, address: str, error: BaseException | None) -> None:
    """A direct call whose connection closed (the worker left, or could not be reached): its
    Dask task delivers its value instead, and the worker is let go (a worker restarted by its
    nanny comes back under another address; the next call leases one the scheduler lists)."""
    with _lock:
        if _leases.get(client) == address:
            del _leases[client]


def eligible(spec: TaskSpec, resources: dict[str, float] | None, options: dict[str, Any]) -> bool:
    """Whether a call of ``spec`` may go straight to a worker (see the module's docstring)."""
    return (
        ENABLED
        and spec.mode == "plain"
        and spec.num_returns == 1
        and not spec.retry.enabled
        and (not resources or (set(resources) <= {"CPU"} and resources.get("CPU", 0) <= 1))
        and not options.get("scheduling_strategy")
        and _runtime.in_worker_task() is None
    )


def submit(
    spec: TaskSpec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    resources: dict[str, float] | None,
    runtime_env: Any,
    submit_task: Any,
) -> tuple[ObjectRef | None, Any]:
    """Send the call straight to this client's leased worker: (its ref, None); or (None, the
    arguments' packing if it was made) if it must go through the scheduler alone (see the
    module's docstring). ``submit_task(client, key, packed, job, worker)`` submits its Dask
    task, restricted to ``worker``."""
    client = _runtime.client()
    if client.asynchronous or time.monotonic() < _backoff.get(client, 0.0):
        return None, None
    ensure_served(client)  # a lost scheduler fails the call at once, as any call's
    job = call_job(client, runtime_env)
    if job.env is not None:
        return None, None  # a runtime_env is set up around Dask's tasks (``_worker.runtime_env``)
    if any(isinstance(a, ObjectRef) for a in args) or any(
        isinstance(v, ObjectRef) for v in kwargs.values()
    ):
        return None, None
    address = _lease(client, resources)
    if address is None:
        return None, None
    ch = channel(client, address)
    if ch.direct_in_flight():
        return None, None
    packing = pack_args(spec.name, args, kwargs, out_of_band=True)
    packed, _, lent = packing
    if lent or (packed is not None and (type(packed) is not bytes or len(packed) >= STORED_ARGS)):
        # Refs inside, or large: the scheduler's path keeps and stores them, with this very
        # pickle (pickling passes a streaming generator on: it is done once).
        return None, packing
    key = task_key(spec.name)
    ref = result_ref(dx.light_future(key, client))
    msg = {
        "op": "task",
        "key": key,
        "spec": spec.pickled(),  # made once per spec; unpickled once per worker
        "packed": packed,
        "owner": owner_of_new_calls(client),
        "job": job,  # its driver's namespace
        "resources": resources,  # what get_assigned_resources() says in it
    }
    lost = functools.partial(_connection_lost, client, address)
    with _lock:
        _submitting.add(key)
    ch.call(key, msg, lost, DIRECT, functools.partial(_refused, client, key), owned=False)
    submit_task(client, key, packed, job, address)
    with _lock:
        _submitting.discard(key)
        refused = key in _refused_keys
        _refused_keys.discard(key)
    if refused:
        batching.unrestrict(client, key)
    return ref, None


def _lease(client: Client, resources: dict[str, float] | None) -> str | None:
    """This client's leased worker (picked on first use: the least busy that fits)."""
    address = _leases.get(client)
    if address is not None and address not in closed_under_us:
        return address
    try:
        found = client.sync(getattr(client.scheduler, WORKERS_OP))
    except Exception:
        return None
    able = {
        a: declared
        for a, declared in found["able"].items()
        if a not in closed_under_us
        and all(declared.get(r, 0) >= n for r, n in (resources or {}).items())
    }
    if not able:
        return None
    busy = found.get("busy", {})
    address = min(able, key=lambda a: (busy.get(a, 0.0), a))
    with _lock:
        _leases[client] = address
    return address
