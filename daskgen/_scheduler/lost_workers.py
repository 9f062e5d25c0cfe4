"""Why a worker left, for Ray's error types (runs in the scheduler's process, inside daskgen's
plugin).

Dask reports every task whose workers all died while running it as ``KilledWorker``; Ray tells
apart a worker process that crashed (``WorkerCrashedError``), a node that died
(``NodeDiedError``) and a task its node's memory monitor killed (``OutOfMemoryError``). Dask's
counterparts, as the scheduler sees them:

* memory: the worker's nanny ends it past ``distributed.worker.memory.terminate`` and logs the
  event ``worker-restart-memory`` {worker, pid, rss} (``SchedulerPlugin.log_event``);
* node: the worker had a nanny, and the nanny does not answer either once the worker is gone
  (the host, or the whole ``dask worker`` process group, went);
* otherwise the worker process died (a ``--no-nanny`` worker is both, and counts as a process).

The verdict is sent to every daskgen client (:data:`WORKER_LOST_OP`) and kept for a while;
``daskgen_worker_lost`` {worker} answers it, waiting (bounded) while it is being made, so that
a ``get`` that meets ``KilledWorker`` raises the right type (the nanny's event can reach the
scheduler just after the worker's connection closed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import _dask_internals as dx
from .._protocol import WORKER_LOST_OP

logger = logging.getLogger("daskgen")

MEMORY_TOPIC = "worker-restart-memory"
EVENT_GRACE_S = 1.0  # s: how long after a worker left its nanny's memory event may still come
NANNY_PING_S = 3.0  # s: a nanny that does not answer within this is gone with its worker
KEPT = 500  # verdicts kept


class LostWorkers:
    """Verdicts on workers that left: ``broadcast(msg)`` sends one to daskgen's clients."""

    def __init__(self, scheduler: Any, broadcast: Any) -> None:
        self.scheduler = scheduler
        self.broadcast = broadcast
        self.memory: dict[str, str] = {}  # worker -> what its nanny's memory event said
        self.verdicts: dict[str, tuple[str, str]] = {}
        self.pending: dict[str, asyncio.Future[Any]] = {}
        # worker -> its nanny, read as it joins (gone from the scheduler's state when it left)
        self.nannies: dict[str, str | None] = {}

    def worker_joined(self, worker: str) -> None:
        """``add_worker``: remember its nanny."""
        self.nannies[worker] = dx.scheduler_worker_nanny(self.scheduler, worker)

    def log_event(self, topic: str, msg: Any) -> None:
        """``SchedulerPlugin.log_event``: remember the workers ended for memory."""
        if topic != MEMORY_TOPIC or not isinstance(msg, dict):
            return
        worker = str(msg.get("worker"))
        limit = dx.scheduler_worker_memory_limit(self.scheduler, worker)
        of = f" of its {_gib(limit)} memory limit" if limit else ""
        self.memory[worker] = (
            f"The nanny of Dask worker {worker} (pid={msg.get('pid')}) ended it: it used "
            f"{_gib(msg.get('rss') or 0)}{of}, past distributed.worker.memory.terminate."
        )
        while len(self.memory) > KEPT:
            del self.memory[next(iter(self.memory))]

    def worker_left(self, worker: str) -> None:
        """``remove_worker``: make the verdict (at once, or in the background)."""
        nanny = self.nannies.pop(worker, None)
        if worker in self.memory:
            self._settle(worker, "memory", self.memory.pop(worker))
            return
        if nanny is None:
            return  # its process was the worker: WorkerCrashedError, the default
        self.pending[worker] = asyncio.get_running_loop().create_future()
        asyncio.ensure_future(self._judge(worker, nanny))

    async def _judge(self, worker: str, nanny: str) -> None:
        try:
            deadline = asyncio.get_running_loop().time() + EVENT_GRACE_S
            while worker not in self.memory and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            if worker in self.memory:
                self._settle(worker, "memory", self.memory.pop(worker))
                return
            alive = await dx.scheduler_ping(self.scheduler, nanny, NANNY_PING_S)
            if alive:
                self._settle(worker, "process", "")
            else:
                self._settle(
                    worker,
                    "node",
                    f"The node running the task died: Dask worker {worker} left and its nanny "
                    f"{nanny} does not answer either (its host, or the whole `dask worker`, is "
                    "gone).",
                )
        except Exception:
            logger.exception("daskgen: failed to tell why worker %s left", worker)
            self._settle(worker, "process", "")

    def _settle(self, worker: str, kind: str, message: str) -> None:
        self.verdicts[worker] = (kind, message)
        while len(self.verdicts) > KEPT:
            del self.verdicts[next(iter(self.verdicts))]
        future = self.pending.pop(worker, None)
        if future is not None and not future.done():
            future.set_result(None)
        if kind != "process":
            self.broadcast(
                {"op": WORKER_LOST_OP, "worker": worker, "kind": kind, "message": message}
            )

    async def why(self, worker: str) -> tuple[str, str] | None:
        """``daskgen_worker_lost``: the verdict on ``worker`` (None: no verdict; it may still
        be in the scheduler, or left too long ago)."""
        future = self.pending.get(worker)
        if future is not None:
            try:
                await asyncio.wait_for(asyncio.shield(future), EVENT_GRACE_S + NANNY_PING_S + 1)
            except asyncio.TimeoutError:
                return None
        return self.verdicts.get(worker)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
