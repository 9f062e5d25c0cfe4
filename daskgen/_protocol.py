"""The protocol between daskgen's client side and what runs inside a Dask task.

Keys
----
* A remote call is one Dask task, key ``"<name>-<32 hex>"`` (``name`` is the function's name, so
  the dashboard shows ``split-...``). The hex part makes keys unguessable: Dask substitutes a
  string argument equal to an existing key (dask/distributed #3965).
* Yield ``i`` of generator task ``T`` is the key ``("<name>-yield-<same hex>", i)``: a tuple key,
  so the dashboard groups every yield of one function as ``<name>-yield``.
* ``put`` values are ``"put-<32 hex>"``.

Messages (all on Dask's existing ordered batched streams)
---------------------------------------------------------
worker -> scheduler ``daskgen-publish``  {task, caller, key, index, nbytes}
    Sent by the worker after it stored yield ``index`` in its own memory. The scheduler extension
    (``_scheduler_ext``) registers the key as held by that worker and owned by ``caller``.
scheduler -> caller client ``daskgen-yield``  {task, key, index}
    Sent *before* the scheduler reports the key in memory, so the client's generator state knows
    the key before Dask tells it the data exists.
client -> scheduler ``daskgen-consumed``  {task, index}
    Backpressure: the consumer has taken refs up to ``index``; forwarded to the producing worker
    as ``daskgen-consumed`` {task, index}.

Because publish messages and the task's own ``task-finished`` travel the same ordered
worker -> scheduler -> client path, a client that sees the task finish has already seen every
yield: the end of a stream needs no sentinel.

Values
------
Errors that belong to one ref (a generator that raised after k yields, a missing or surplus yield)
are stored as :class:`ErrorValue` under that ref's key. ``get`` raises them, and a task that
receives one as a top-level argument raises it, so the error flows down a pipeline as in Ray.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

PUBLISH_OP = "daskgen-publish"
YIELD_OP = "daskgen-yield"
CONSUMED_OP = "daskgen-consumed"
PLUGIN_NAME = "daskgen"

Key = Any  # a Dask key: str or tuple


def new_token() -> str:
    return uuid.uuid4().hex


def task_key(name: str) -> str:
    return f"{name}-{new_token()}"


def yield_prefix(task: str) -> str:
    name, _, token = task.rpartition("-")
    return f"{name}-yield-{token}"


def yield_key(task: str, index: int) -> tuple[str, int]:
    return (yield_prefix(task), index)


def task_of_yield(key: Key) -> str | None:
    """The generator task that published ``key``, or None if ``key`` is not a yield."""
    if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)):
        return None
    head, sep, token = key[0].rpartition("-yield-")
    return f"{head}-{token}" if sep else None


def put_key() -> str:
    return f"put-{new_token()}"


def key_name(key: Key) -> str:
    """The user-facing function name in a key (``split`` for ``split-<hex>``)."""
    head = key[0] if isinstance(key, tuple) else key
    return str(head).rpartition("-")[0] or str(head)


@dataclass(frozen=True)
class ErrorValue:
    """An exception stored as a value: ``get`` and task arguments re-raise it."""

    error: BaseException


@dataclass
class GenOutcome:
    """What a generator task returns to Dask: small, whatever the generator yielded.

    ``count`` refs were published with indices ``0..count-1``; when ``error_index`` is not None,
    the ref at that index holds the error (dynamic and streaming modes add it after the values).
    """

    task: str
    mode: str
    count: int
    error_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def keys(self) -> list[tuple[str, int]]:
        return [yield_key(self.task, i) for i in range(self.count)]
