"""``cancel()`` as Ray does it, the caller's half (in the driver, or in a task that cancels);
``_interrupt`` is the worker's half.

* A task not started yet never runs: Dask cancels it (with Dask's ``force``, whoever else holds
  the key: a call is fire-and-forget, so Dask's fire-and-forget client holds it too, and Ray
  cancels a task whoever holds its result). ``get`` raises ``TaskCancelledError``.
* A running task gets ``KeyboardInterrupt`` in its thread, once, as in Ray: it fails with
  ``RayTaskError(TaskCancelledError)`` where it was, and a task that catches the interrupt and
  returns normally delivers its value (Ray too). Dask is not asked to cancel it, so that what it
  returns is what ``get`` sees.
* ``force=True``: Dask cancels it at once (``get`` raises ``TaskCancelledError``) and its thread
  is stopped and detached from the worker's pool (see ``_interrupt``).
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import Client

from ._interrupt import interrupt_all
from ._protocol import Key, as_key

logger = logging.getLogger("daskgen")

REASON = "cancelled by daskgen.cancel()"


def cancel_keys(
    client: Client, keys: list[Key], *, force: bool, recursive: bool, revoke: bool = False
) -> None:
    """Cancel the tasks ``keys`` (see the module's docstring); returns without waiting for
    them to stop. ``revoke``: Dask cancels running tasks too (a generator's caller ends its
    stream at once, whatever the producer does after)."""
    where = _dask_cancel(client, keys, processing_too=force or revoke)
    not_started = []
    for worker, assigned in where.items():
        assigned = [as_key(k) for k in assigned]
        try:
            answers = client.run(
                interrupt_all, assigned, force, recursive, workers=[worker], on_error="ignore"
            )
        except Exception:  # that worker is gone: so is the task's thread
            logger.debug("daskgen: could not interrupt %s on %s", assigned, worker, exc_info=True)
            answers = {}
        running = answers.get(worker) or [False] * len(assigned)
        not_started += [key for key, was in zip(assigned, running, strict=True) if not was]
    if not_started and not (force or revoke):
        # Assigned to a worker but not started there: they never run (if one starts meanwhile,
        # it stops at once, see _interrupt.running).
        _dask_cancel(client, not_started, processing_too=True)


def _dask_cancel(client: Client, keys: list[Key], processing_too: bool) -> dict[str, list[Any]]:
    return client.sync(
        client.scheduler.daskgen_cancel,
        keys=list(keys),
        client=client.id,
        reason=REASON,
        processing_too=processing_too,
    )
