"""``Queue``: a first-in first-out queue that the driver, tasks and actors share, as Ray's
``ray.util.queue.Queue`` (runs in the caller's process; the queue itself is an asynchronous
daskgen actor, so it lives on a worker and a blocked ``get`` waits there, not in the caller).

Why an actor and not Dask's ``distributed.Queue``: Dask's has no ``full``/``empty``/``qsize``
that Ray code checks, no all-or-nothing batch put, and raises ``TimeoutError`` where Ray code
catches ``queue.Empty``/``queue.Full``. The object pickles with its actor's handle: pass it to
tasks and actors, and they reach the same queue.
"""

from __future__ import annotations

import asyncio
import queue as _std_queue
from collections.abc import Iterable
from typing import Any

from .._client.actors import kill
from .._client.api import get
from .._client.remote_function import remote

__all__ = ["Empty", "Full", "Queue"]


class Empty(_std_queue.Empty):
    """Raised by ``get`` when nothing came within the time given (``queue.Empty`` too)."""


class Full(_std_queue.Full):
    """Raised by ``put`` when no room came within the time given (``queue.Full`` too)."""


class _QueueActor:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.items.qsize()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        if timeout == 0:  # not blocking (``wait_for`` with 0 gives up before even trying)
            try:
                return self.items.put_nowait(item)
            except asyncio.QueueFull:
                raise Full("The queue is full") from None
        try:
            await asyncio.wait_for(self.items.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"No room in the queue within {timeout} s") from None

    async def get(self, timeout: float | None = None) -> Any:
        if timeout == 0:
            try:
                return self.items.get_nowait()
            except asyncio.QueueEmpty:
                raise Empty("The queue is empty") from None
        try:
            return await asyncio.wait_for(self.items.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"Nothing in the queue within {timeout} s") from None

    def put_nowait_batch(self, items: list[Any]) -> None:
        if self.maxsize > 0 and self.items.qsize() + len(items) > self.maxsize:
            raise Full(
                f"Cannot add {len(items)} items to queue of size {self.items.qsize()} and "
                f"maxsize {self.maxsize}."
            )
        for item in items:
            self.items.put_nowait(item)

    def get_nowait_batch(self, count: int) -> list[Any]:
        if count > self.items.qsize():
            raise Empty(f"Cannot get {count} items from queue of size {self.items.qsize()}.")
        return [self.items.get_nowait() for _ in range(count)]


_QueueActorClass = remote(_QueueActor)


class Queue:
    """A queue of at most ``maxsize`` items (0: no bound); ``actor_options`` go to the queue
    actor's ``.options(...)`` (``num_cpus``, ``name``, ...)."""

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative int, not {maxsize!r}")
        self.maxsize = maxsize
        options = {"max_concurrency": 1000, **(actor_options or {})}  # blocked gets wait there
        self.actor = _QueueActorClass.options(**options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        return self.qsize()

    def qsize(self) -> int:
        """How many items are in the queue now."""
        return int(get(self.actor.qsize.remote()))

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.qsize() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; if the queue is full, wait for room (up to ``timeout`` s, then
        ``Full``), or with ``block=False`` raise ``Full`` at once."""
        get(self.actor.put.remote(item, _wait_for(block, timeout)))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        await self.actor.put.remote(item, _wait_for(block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; if there is none, wait for one (up to
        ``timeout`` s, then ``Empty``), or with ``block=False`` raise ``Empty`` at once."""
        return get(self.actor.get.remote(_wait_for(block, timeout)))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        return await self.actor.get.remote(_wait_for(block, timeout))

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all of ``items`` at once, or none of them (``Full``) if they do not all fit."""
        get(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """The ``num_items`` oldest items, or ``Empty`` (taking none) if fewer are there."""
        if not isinstance(num_items, int) or num_items < 0:
            raise ValueError(f"num_items must be a non-negative int, not {num_items!r}")
        return list(get(self.actor.get_nowait_batch.remote(num_items)))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor: calls waiting on it fail (``force`` and ``grace_period_s``
        are accepted for Ray's signature: the actor is ended at once either way)."""
        if self.actor is not None:
            kill(self.actor)
        self.actor = None


def _wait_for(block: bool, timeout: float | None) -> float | None:
    """How long the actor may wait for an item or for room: 0 when not blocking."""
    if not block:
        return 0
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return timeout
