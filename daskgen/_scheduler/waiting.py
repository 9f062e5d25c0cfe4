"""A daskgen task waiting behind another on a busy worker moves to a worker that is free.

Ray starts a task on whichever node has a free CPU first. Dask places a task that needs a
resource (daskgen's ``CPU``) on a worker as soon as it is submitted, by its estimate of when
each worker will be free, and the worker then runs what it was sent in order; the estimates
go by function, so a long call among short ones of the same function is taken for short, and
the calls placed behind it wait for it while other workers idle (measured: 8 calls of 0.1 s
sent behind one of 3 s on two workers finished after 3.1 s, against 0.8 s on Ray).

Here, whenever a daskgen task is sent to a worker or leaves one, or a worker joins, the
scheduler looks (once per turn of its loop) for workers with a thread free and daskgen tasks
waiting on a worker with more tasks than threads, and moves them through Dask's own work
stealing (the worker gives up a task it has not started; one it started refuses, and is then
known to be running). Only daskgen's tasks move, never another client's; only those restricted
to no worker, or loosely (Dask's ``allow_other_workers``: a direct call its leased worker had
no slot for, ``_client.direct``; a direct call that runs there refuses to move,
``_worker.direct``); and only to workers that run daskgen's tasks with the resources the task
needs free. A task stays where its dependencies are if it would fetch 1 MiB or more of them
(a call's large arguments, stored where it was placed, ``_client.stored_args``: moving it
would copy them between workers; Dask's stealing still weighs such a move by its own
estimates). Without Dask's work stealing (``distributed.scheduler.work-stealing: false``)
nothing moves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from .. import _dask_internals as dx
from .._protocol import STORED_ARGS, submission_order

logger = logging.getLogger("daskgen")

RETRY_S = 0.02  # after moves were asked for: look again, past the tasks that refused
MOVED_KEPT = 1000  # the last tasks asked to move, for tests and the curious


class WaitingTasks:
    """Moves daskgen's waiting tasks to free workers (see the module's docstring)."""

    def __init__(
        self, scheduler: Any, ours: Callable[[Any], bool], able: Callable[[str], bool]
    ) -> None:
        self.scheduler = scheduler
        self.ours = ours  # a key is daskgen's task
        self.able = able  # a worker runs daskgen's tasks
        self.asked: dict[Any, str] = {}  # key -> the worker asked to give it up
        self.moved: collections.deque[Any] = collections.deque(maxlen=MOVED_KEPT)  # asked for
        self._looking = False

    def left(self, key: Any) -> None:
        """A daskgen task left its worker (ended, failed or was released)."""
        self.asked.pop(key, None)
        self.look()

    def look(self) -> None:
        """Look for moves once this turn of the scheduler's loop is over (many tasks end in
        one turn)."""
        if not self._looking:
            self._looking = True
            asyncio.get_running_loop().call_soon(self._move)

    def _started(self, key: Any, worker: str) -> bool:
        return (
            self.asked.get(key) == worker
            and dx.scheduler_processing_on(self.scheduler, key) == worker
        )

    def _move(self) -> None:
        self._looking = False
        try:
            free = {
                worker: n
                for worker, n in dx.scheduler_free_threads(self.scheduler).items()
                if self.able(worker)
            }
            if not free:
                return
            asked = False
            waiting = dx.scheduler_waiting_behind(
                self.scheduler, sum(free.values()), self._started, submission_order
            )
            for key, worker in waiting:
                if not self.ours(key):
                    continue
                to = next(
                    (
                        w
                        for w, n in free.items()
                        if n and dx.scheduler_task_fits(self.scheduler, key, w, STORED_ARGS - 1)
                    ),
                    None,
                )
                if to is not None and dx.scheduler_move_task(self.scheduler, key, to):
                    self.asked[key] = worker
                    self.moved.append(key)
                    free[to] -= 1
                    asked = True
                    if not any(free.values()):
                        break
            if asked:
                asyncio.get_running_loop().call_later(RETRY_S, self.look)
        except Exception:
            logger.exception("daskgen: failed to move waiting tasks to free workers")
