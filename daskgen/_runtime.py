"""Process-wide state, in every process daskgen runs in (the driver, workers, the scheduler's):
the session slot, "am I inside a task", and the actor and call running now.

Three things only the client layer knows how to do are reached through hooks it registers when
``daskgen`` is imported (``_client.session``), so that lower layers never import it: starting a
session on first use (Ray's calls initialise on first use), giving a worker's own client
daskgen's stream handlers, and (re)registering daskgen's scheduler plugin for a connection.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Callable
from typing import Any

import distributed
from distributed import Client

from . import _dask_internals as dx
from ._job import Job
from ._protocol import CLIENT_OP, DASKGEN_STREAM_INTERVAL_S

session: Any = None  # this process's _client.session.Session, between init() and shutdown()

# Set while an actor's method runs (its executor threads copy it from the creation task).
current_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "daskgen_actor", default=None
)
# The key of the actor call running (``get_runtime_context().get_task_id()``).
current_call: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "daskgen_call", default=None
)

# The resources the call running in this thread holds, where Dask's task state cannot say
# (a direct call, ``_worker.direct``, runs outside Dask's pool).
current_resources: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "daskgen_resources", default=None
)
# The placement group of the task running (``get_current_placement_group``): (the group's
# handle, whether its child tasks join it), set by the task's ``TaskSpec``.
current_placement: contextvars.ContextVar[tuple[Any, bool] | None] = contextvars.ContextVar(
    "daskgen_placement", default=None
)
# The job (namespace, runtime_env) of the daskgen task or actor running here: the calls it
# makes and the names it looks up are its driver's (see ``_job``).
current_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "daskgen_job", default=None
)

# Hooks the client layer registers (see the module's docstring).
start_session: Callable[[], Any] | None = None
prepare_client: Callable[[Client], None] | None = None


def in_worker_task() -> distributed.Worker | None:
    """The Dask worker when called from inside a task, else None."""
    try:
        return distributed.get_worker()
    except ValueError:
        return None


def client() -> Client:
    """The ``distributed.Client`` daskgen uses here: inside a task the worker's own (so that
    tasks can call remote functions), else the session's, started on first use."""
    if in_worker_task() is not None:
        worker_client = distributed.get_client()
        assert prepare_client is not None, "daskgen._client is not imported"
        prepare_client(worker_client)
        return worker_client
    current = session
    if current is None:
        assert start_session is not None, "daskgen._client is not imported"
        current = start_session()
    return current.client


_outside_jobs: list[Job] = []  # the job of daskgen calls made in plain Dask tasks here


def job() -> Job:
    """The job of the code running here: inside a daskgen task or actor, its driver's (it
    travels with each call); in the driver, the session's (started on first use, as Ray's
    calls initialise); in a plain Dask task, this process's own anonymous one."""
    running = current_job.get()
    if running is not None:
        return running
    if in_worker_task() is not None:
        if not _outside_jobs:
            import uuid

            _outside_jobs.append(Job(str(uuid.uuid4())))
        return _outside_jobs[0]
    current = session
    if current is None:
        assert start_session is not None, "daskgen._client is not imported"
        current = start_session()
    return current.job  # type: ignore[no-any-return]


# ------------------------------------------------------------- daskgen's side of the scheduler

# The connection (the client's ``scheduler_comm``) on which daskgen's scheduler plugin is known
# to serve this client. An op the scheduler does not know closes the whole connection, and a
# scheduler restarted on the same address has none of daskgen's handlers (Dask's client
# reconnects by itself, and flushes what it queued meanwhile): so daskgen's own messages wait
# until the plugin serves the current connection (see ``send``), and the client layer
# registers it again after a reconnect (``prepare_scheduler``).
_served: weakref.WeakKeyDictionary[Client, Any] = weakref.WeakKeyDictionary()
_held: weakref.WeakKeyDictionary[Client, list[dict[str, Any]]] = weakref.WeakKeyDictionary()
_served_lock = threading.Lock()
# Clients daskgen made itself (its driver's): their stream to the scheduler batches at
# DASKGEN_STREAM_INTERVAL_S, set on each connection they make.
own_clients: weakref.WeakSet[Client] = weakref.WeakSet()

# Set by the client layer: (re)register daskgen's scheduler plugin for ``client`` (on its loop),
# then call ``served`` (or take the held messages with ``held_back`` if it cannot).
prepare_scheduler: Callable[[Client], None] | None = None


def _untrusted(client: Client) -> bool:
    return False


# Set by the worker layer: whether ``client`` is the client of a worker (in this thread) whose
# scheduler was found to serve daskgen. Such a client's connection is served as it is: a Dask
# worker does not outlive its scheduler, so its client cannot meet one without daskgen, and
# its messages (a handle's ref unpickled in a task) must go at once, not after a round trip.
served_by_worker: Callable[[Client], bool] = _untrusted


def _not_in_a_worker(client: Client, msg: dict[str, Any]) -> bool:
    return False


# Set by the worker layer: send ``msg`` on the stream of the worker this thread runs in, if it
# is one whose scheduler serves daskgen (True), ahead of the task's own end on that stream.
send_on_worker_stream: Callable[[Client, dict[str, Any]], bool] = _not_in_a_worker


def send_desire(client: Client, msg: dict[str, Any]) -> None:
    """Send a ``daskgen-desire`` (refs unpickled here): from inside a task, on its worker's
    stream, so that the scheduler registers the want before it hears the task ended (after
    which the caller lets go of the refs it lent the task: the client's own connection could
    lose that race); elsewhere on the client's connection."""
    if not send_on_worker_stream(client, msg):
        send(client, msg)


def is_served(client: Client) -> bool:
    """Whether daskgen's scheduler plugin serves ``client``'s current connection."""
    comm = client.scheduler_comm
    return comm is not None and _served.get(client) is comm


def was_served(client: Client) -> bool:
    """Whether daskgen's scheduler plugin has served one of ``client``'s connections."""
    return client in _served


def send(client: Client, msg: dict[str, Any]) -> None:
    """Send daskgen's own message ``msg`` to the scheduler (any thread): now if daskgen's
    plugin serves the client's connection, else once it does."""
    if is_served(client):
        dx.client_send(client, msg)
        return
    if client.scheduler_comm is not None and served_by_worker(client):
        served(client)
        dx.client_send(client, msg)
        return
    with _served_lock:
        held = _held.setdefault(client, [])
        held.append(msg)
        first = len(held) == 1
    if first and prepare_scheduler is not None:
        prepare_scheduler(client)


def served(client: Client) -> None:
    """Daskgen's plugin serves the current connection (any thread): send what waited."""
    with _served_lock:
        _served[client] = client.scheduler_comm
        held = _held.pop(client, [])
    if client in own_clients:
        dx.set_batching_interval(dx.client_batched_comm(client), DASKGEN_STREAM_INTERVAL_S)
    dx.client_send(client, {"op": CLIENT_OP})
    for msg in held:
        dx.client_send(client, msg)


def held_back(client: Client) -> list[dict[str, Any]]:
    """The messages waiting for ``client``'s connection to be served, taken (they will not be
    sent: the client is closing)."""
    with _served_lock:
        return _held.pop(client, [])
