"""Why workers left, in the caller's process: the error type of a task whose last worker died
(``exceptions._worker_died``) comes from the verdict of daskgen's scheduler plugin
(``_scheduler.lost_workers``), which each client gets as ``daskgen-worker-lost`` and, if a
``get`` meets the failure first, asks for."""

from __future__ import annotations

from typing import Any

from .. import _dask_internals as dx
from .. import _runtime, exceptions
from .._protocol import WORKER_LOST_OP


def on_worker_lost(worker: str, kind: str, message: str, **_: Any) -> None:
    """The clients' handler for ``daskgen-worker-lost`` (on the client's event loop)."""
    exceptions.worker_lost(worker, kind, message)


def ask(worker: str) -> None:
    """``exceptions.why_lost``: ask the scheduler why ``worker`` left, waiting (bounded, by
    the plugin) for its verdict; never from the client's event loop (it would block it), and
    never to start a session."""
    if _runtime.session is None and _runtime.in_worker_task() is None:
        return
    try:
        client = _runtime.client()
        if dx.on_loop_thread(client):
            return
        found = client.sync(client.scheduler.daskgen_worker_lost, worker=worker)
    except Exception:  # the scheduler is gone or has no verdict: the default type stands
        return
    if found:
        exceptions.worker_lost(worker, *found)


OP = WORKER_LOST_OP
exceptions.why_lost = ask
