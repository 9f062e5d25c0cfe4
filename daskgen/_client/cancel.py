"""``cancel()`` as Ray does it, the caller's half (in the driver, or in a task that cancels);
the scheduler extension (``DaskgenSchedulerPlugin.on_cancel``) and ``_worker.interrupt`` (on
the workers) do the rest.

* A task not started yet never runs: Dask cancels it (with Dask's ``force``, whoever else holds
  the key: a call is fire-and-forget, so Dask's fire-and-forget client holds it too, and Ray
  cancels a task whoever holds its result). ``get`` raises ``TaskCancelledError``.
* A running task gets ``KeyboardInterrupt`` in its thread, once, as in Ray: it fails with
  ``RayTaskError(TaskCancelledError)`` where it was, and a task that catches the interrupt and
  returns normally delivers its value (Ray too). Dask is not asked to cancel it, so that what it
  returns is what ``get`` sees.
* ``force=True``: Dask cancels it at once (``get`` raises ``TaskCancelledError``) and its thread
  is stopped and detached from the worker's pool (see ``_worker.interrupt``).

The request travels on the client's ordered stream to the scheduler, behind the graph that made
the task: a cancel right after ``.remote()`` finds the task (an RPC, as Dask's own
``Client.cancel`` sends, can overtake the graph). ``cancel()`` does not wait, as Ray's does not.
"""

from __future__ import annotations

from typing import Any

from .. import _runtime
from .._protocol import Key, cancel_message
from . import batching
from .actor_channel import cancel_actor_call

REASON = "cancelled by daskgen.cancel()"


def cancel_generator(state: Any, force: bool, recursive: bool) -> None:
    """The stream ends at once for its caller (Ray skips the yields not taken yet); the
    producer is stopped (a generator method of an actor, by its host)."""
    if cancel_actor_call(state.task_key, force):
        state.mark_cancelled()
        return
    if state.mark_cancelled():
        cancel_keys(state.client, [state.task_key], force=force, recursive=recursive, revoke=True)


def cancel_keys(
    client: Any, keys: list[Key], *, force: bool, recursive: bool, revoke: bool = False
) -> None:
    """Cancel the tasks ``keys`` (see the module's docstring): one message on the client's ordered
    stream, behind the graphs that made them. ``revoke``: Dask cancels running tasks too."""
    msg = cancel_message(keys, force=force, recursive=recursive, revoke=revoke, reason=REASON)
    batching.flush(client)  # a direct call's task may still wait to be sent (``direct``)
    _runtime.send(client, msg)
