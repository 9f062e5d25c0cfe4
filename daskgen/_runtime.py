"""Process-wide state, in every process daskgen runs in (the driver, workers, the scheduler's):
the session slot, "am I inside a task", and the actor and call running now.

Two things only the client layer knows how to do are reached through hooks it registers when
``daskgen`` is imported (``_client.session``), so that lower layers never import it: starting a
session on first use (Ray's calls initialise on first use), and giving a worker's own client
daskgen's stream handlers.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import distributed
from distributed import Client

session: Any = None  # this process's _client.session.Session, between init() and shutdown()

# Set while an actor's method runs (its executor threads copy it from the creation task).
current_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "daskgen_actor", default=None
)
# The key of the actor call running (``get_runtime_context().get_task_id()``).
current_call: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "daskgen_call", default=None
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
