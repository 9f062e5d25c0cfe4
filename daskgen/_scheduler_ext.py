"""The scheduler half of yield publishing: a small ``SchedulerPlugin`` with two stream handlers.

Routes it adds to the scheduler's batched-stream handlers (see ``_protocol`` for the messages):

* ``daskgen-publish`` (from workers): register a yield the worker already holds as a key owned by
  the generator's caller, after telling the caller which generator and index it belongs to.
* ``daskgen-consumed`` (from clients): forward a consumer's progress to the producing worker
  (backpressure).

A handler that raised would close the sender's whole connection, so both catch everything and log.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from . import _dask_internals as dx
from ._protocol import CONSUMED_OP, PLUGIN_NAME, PUBLISH_OP, YIELD_OP

logger = logging.getLogger("daskgen")


def _as_key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


class DaskgenSchedulerPlugin(SchedulerPlugin):
    """Installs daskgen's stream handlers on the scheduler (idempotent, by name)."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        dx.scheduler_add_stream_handler(scheduler, PUBLISH_OP, self.on_publish)
        dx.scheduler_add_stream_handler(scheduler, CONSUMED_OP, self.on_consumed)

    def on_publish(
        self, worker: str, task: str, caller: str, key: Any, index: int, nbytes: int, **_: Any
    ) -> None:
        try:
            self._publish(worker, task, caller, _as_key(key), index, nbytes)
        except Exception:  # never let an error close the worker's stream
            logger.exception("daskgen: failed to publish %s from %s", key, worker)

    def _publish(
        self, worker: str, task: str, caller: str, key: Any, index: int, nbytes: int
    ) -> None:
        s = self.scheduler
        state = dx.scheduler_key_state(s, key)
        if state is not None:
            # A re-run republished an index the caller already has: the first value wins, so no
            # index ever mixes two attempts. Drop the new copy unless it is the same replica.
            if worker not in dx.scheduler_holders(s, key):
                dx.scheduler_free_on_worker(s, worker, [key])
            return
        if not dx.scheduler_has_client(s, caller):
            # The caller is gone: nobody will ever release this key, so never register it.
            dx.scheduler_free_on_worker(s, worker, [key])
            return
        # The caller learns which generator the key belongs to before Dask reports it in memory.
        dx.scheduler_send_to_client(
            s, caller, {"op": YIELD_OP, "task": task, "key": key, "index": index}
        )
        dx.scheduler_register_data(s, key, worker, nbytes, caller)

    def on_consumed(self, client: str, task: str, index: int, **_: Any) -> None:
        try:
            worker = dx.scheduler_processing_on(self.scheduler, task)
            if worker is not None:
                dx.scheduler_send_to_worker(
                    self.scheduler, worker, {"op": CONSUMED_OP, "task": task, "index": index}
                )
        except Exception:
            logger.exception("daskgen: failed to forward consumption of %s", task)
