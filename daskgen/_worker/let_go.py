"""Letting a paused producer run on (runs in the worker process, called by the scheduler through
Dask's ``run``: ``_protocol.LET_GO``): its stream was passed to another task, whose consumer is
gone (``_scheduler.handoff``). A ``run`` call reaches a worker whether or not a generator task
has started there, which a ``daskgen-consumed`` message on its stream would not (a worker that
has not registered that handler closes the connection on it)."""

from __future__ import annotations

from typing import Any

from .._protocol import NO_CONSUMER_INDEX
from .publish import _producers


def let_go(task: Any, dask_worker: Any = None) -> bool:
    """Let the producer of ``task`` on this worker run to its end unpaused; False if this
    worker runs no such producer (yet)."""
    producer = _producers.get(task)
    if producer is None:
        return False
    producer.on_consumed(NO_CONSUMER_INDEX)
    return True
