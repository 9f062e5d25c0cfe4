"""The scheduler half of yield publishing: a small ``SchedulerPlugin`` with two stream handlers.

Routes it adds to the scheduler's batched-stream handlers (see ``_protocol`` for the messages):

* ``daskgen-publish`` (from workers): register a yield the worker already holds as a key owned by
  the generator's caller, after telling the caller which generator and index it belongs to.
* ``daskgen-consumed`` (from clients): forward a consumer's progress to the producing worker
  (backpressure).
* ``daskgen-result`` (from workers): forward a small task result, sent ahead of the task's
  completion, to the caller (so its ``get`` needs no further round trip).
* ``daskgen-actor`` (from workers): an actor was created on (or killed from) that worker. When
  a worker holding actors leaves, or an actor is killed, every client gets
  ``daskgen-actor-died`` {actor, reason}.

And two request handlers for named actors: ``daskgen_actor_register`` {name, state} (False if
the name is taken) and ``daskgen_actor_lookup`` {name} (the pickled handle, or None).

A handler that raised would close the sender's whole connection, so both catch everything and log.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from . import _dask_internals as dx
from ._protocol import (
    ACTOR_DIED_OP,
    ACTOR_OP,
    CONSUMED_OP,
    MAX_RETRIES_ANNOTATION,
    PLUGIN_NAME,
    PUBLISH_OP,
    RESULT_OP,
    YIELD_OP,
)

logger = logging.getLogger("daskgen")


def _as_key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


class DaskgenSchedulerPlugin(SchedulerPlugin):
    """Installs daskgen's stream handlers on the scheduler (idempotent, by name)."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.actors: dict[str, set[str]] = {}  # worker address -> actor ids living there
        self.names: dict[str, bytes] = {}  # actor name -> pickled handle
        self.named: dict[str, str] = {}  # actor id -> its name

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        dx.scheduler_add_stream_handler(scheduler, ACTOR_OP, self.on_actor)
        dx.scheduler_add_handler(scheduler, "daskgen_actor_register", self.register_actor)
        dx.scheduler_add_handler(scheduler, "daskgen_actor_lookup", self.lookup_actor)
        dx.scheduler_add_stream_handler(scheduler, PUBLISH_OP, self.on_publish)
        dx.scheduler_add_stream_handler(scheduler, CONSUMED_OP, self.on_consumed)
        dx.scheduler_add_stream_handler(scheduler, RESULT_OP, self.on_result)

    def on_publish(self, worker: str, task: str, caller: str, items: list, **_: Any) -> None:
        try:
            self._publish(worker, task, caller, items)
        except Exception:  # never let an error close the worker's stream
            logger.exception("daskgen: failed to publish yields of %s from %s", task, worker)

    def _publish(self, worker: str, task: str, caller: str, items: list) -> None:
        s = self.scheduler
        if not dx.scheduler_has_client(s, caller):
            # The caller is gone: nobody would ever release these keys, so never register them.
            dx.scheduler_free_on_worker(
                s, worker, [_as_key(k) for k, _, _, _, replace in items if not replace]
            )
            return
        fresh: dict[Any, int] = {}
        duplicates = []
        announce = []
        for key, index, nbytes, inline, replace in items:
            key = _as_key(key)
            if not replace and dx.scheduler_key_state(s, key) is not None:
                # A re-run republished an index the caller already has: the first value wins,
                # so no index ever mixes two attempts. Drop the new copy (unless it is the same
                # replica, on this very worker).
                if worker not in dx.scheduler_holders(s, key):
                    duplicates.append(key)
                continue
            if not replace:
                fresh[key] = nbytes
            announce.append((key, index, inline, replace))
        if duplicates:
            dx.scheduler_free_on_worker(s, worker, duplicates)
        if fresh:
            dx.scheduler_register_data(s, fresh, worker, caller)
        if announce:
            # Only keys new to the cluster may skip the queue to a caller in this process: no
            # earlier message can concern them (a republished or replaced yield may have one).
            direct = len(fresh) == len(announce)
            dx.scheduler_send_to_client(
                s, caller, {"op": YIELD_OP, "task": task, "items": announce}, direct=direct
            )

    def on_result(self, worker: str, caller: str, key: Any, blob: bytes, **_: Any) -> None:
        """A small task result sent ahead of the task's completion: pass it to the caller."""
        try:
            if dx.scheduler_has_client(self.scheduler, caller):
                msg = {"op": RESULT_OP, "key": _as_key(key), "blob": blob}
                dx.scheduler_send_to_client(self.scheduler, caller, msg, direct=True)
        except Exception:
            logger.exception("daskgen: failed to forward the result of %s", key)

    # -- retries after a worker death -----------------------------------------------------------

    def update_graph(self, scheduler: Any, *, annotations: Any = None, **kwargs: Any) -> None:
        """Give each task Ray's ``max_retries`` for worker deaths, through Dask's own counter.

        Dask re-runs a task whose worker died until it has lost ``allowed-failures`` workers
        (then ``KilledWorker``, which ``get`` raises as ``WorkerCrashedError``); starting the
        task's count higher or lower makes that limit the task's own.
        """
        try:
            for key, max_retries in ((annotations or {}).get(MAX_RETRIES_ANNOTATION) or {}).items():
                dx.scheduler_allow_worker_failures(scheduler, _as_key(key), max_retries)
        except Exception:
            logger.exception("daskgen: failed to apply max_retries")

    # -- actors ---------------------------------------------------------------------------------

    def on_actor(self, worker: str, actor: str, alive: bool, **_: Any) -> None:
        try:
            if alive:
                self.actors.setdefault(worker, set()).add(actor)
            else:
                self.actors.get(worker, set()).discard(actor)
                self._died(actor, "it was killed with kill()")
        except Exception:
            logger.exception("daskgen: failed to record actor %s", actor)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        for actor in self.actors.pop(worker, set()):
            self._died(actor, f"its worker {worker} left the cluster")

    def _died(self, actor: str, reason: str) -> None:
        name = self.named.pop(actor, None)
        if name is not None:
            self.names.pop(name, None)
        msg = {"op": ACTOR_DIED_OP, "actor": actor, "reason": reason}
        for client in dx.scheduler_clients(self.scheduler):
            dx.scheduler_send_to_client(self.scheduler, client, dict(msg))

    def register_actor(self, name: str, state: bytes, actor: str) -> bool:
        if name in self.names:
            return False
        self.names[name] = state
        self.named[actor] = name
        return True

    def lookup_actor(self, name: str) -> bytes | None:
        return self.names.get(name)

    def on_consumed(self, client: str, task: str, index: int, **_: Any) -> None:
        try:
            worker = dx.scheduler_processing_on(self.scheduler, task)
            if worker is not None:
                dx.scheduler_send_to_worker(
                    self.scheduler, worker, {"op": CONSUMED_OP, "task": task, "index": index}
                )
        except Exception:
            logger.exception("daskgen: failed to forward consumption of %s", task)
