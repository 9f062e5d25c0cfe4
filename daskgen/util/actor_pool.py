"""``ActorPool``: a fixed set of actors sharing work, as Ray's ``ray.util.ActorPool`` does
(runs in the caller's process; the actors are ordinary daskgen actors)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._client.api import get, wait


class ActorPool:
    """Hand work to whichever of ``actors`` is idle: ``submit(fn, value)`` calls
    ``fn(actor, value)`` (which returns a ref, e.g. ``lambda a, v: a.work.remote(v)``) on an
    idle actor, or queues it until one is; ``get_next`` returns the results in submission
    order, ``get_next_unordered`` as they complete; ``map`` and ``map_unordered`` do it for a
    whole iterable.

    Beyond Ray: ``get_next_unordered(timeout, ignore_if_timedout=True)`` raises
    ``TimeoutError`` as ``get_next`` does (Ray 2.60 fails there with an ``UnboundLocalError``).
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: list[Any] = list(actors)
        self._actor_of: dict[Any, Any] = {}  # ref -> the actor still busy with it
        self._ticket_of: dict[Any, int | None] = {}  # results not taken (None: abandoned)
        self._by_ticket: dict[int, Any] = {}  # the same, by submission number
        # calls waiting for an actor, oldest first: (fn, value, ticket); their tickets are the
        # newest ones (calls start in submission order)
        self._queued: collections.deque[tuple[Callable[[Any, Any], Any], Any, int]] = (
            collections.deque()
        )
        self._tickets = 0  # submissions made
        self._next = 0  # the submission ``get_next`` returns next

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Call ``fn(actor, value)`` on an idle actor now, or once one is idle."""
        ticket = self._tickets
        self._tickets += 1
        if self._idle:
            self._start(fn, value, ticket, self._idle.pop())
        else:
            self._queued.append((fn, value, ticket))

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """The results of ``fn(actor, value)`` for each of ``values``, in their order. Results
        of earlier submissions not taken yet are dropped first (as Ray's pool does)."""
        self._drop_pending()
        for value in values:
            self.submit(fn, value)
        return self._drain(self.get_next)

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """As :meth:`map`, the results as they complete."""
        self._drop_pending()
        for value in values:
            self.submit(fn, value)
        return self._drain(self.get_next_unordered)

    # -- results -------------------------------------------------------------------------------

    def has_next(self) -> bool:
        """Whether a submitted call's result has not been taken yet."""
        return bool(self._by_ticket or self._queued)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order (its error raised), waiting up to ``timeout`` s
        (``TimeoutError`` after; with ``ignore_if_timedout`` that result is then skipped)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        while self._next not in self._by_ticket:  # still queued: an actor must finish first
            self._free_one(timeout)
        ref = self._by_ticket[self._next]
        ready, _ = wait([ref], timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                self._abandon(ref)
            raise TimeoutError("Timed out waiting for result")
        return self._take(ref)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Any submitted call's result, the first to complete (its error raised), waiting up
        to ``timeout`` s (``TimeoutError`` after)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        while True:
            refs = list(self._ticket_of)
            if not refs:  # every result pending is queued, and no actor is left to run it
                raise StopIteration("No actor left in the pool to run the queued calls")
            ready, _ = wait(refs, num_returns=1, timeout=timeout)
            if not ready:
                raise TimeoutError("Timed out waiting for result")
            if self._ticket_of[ready[0]] is not None:
                return self._take(ready[0])
            self._take(ready[0], value=False)  # abandoned: only its actor is freed

    # -- the actors ----------------------------------------------------------------------------

    def has_free(self) -> bool:
        """Whether an actor is idle and no call waits for one."""
        return bool(self._idle) and not self._queued

    def pop_idle(self) -> Any:
        """Take an idle actor out of the pool (None if none is free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add ``actor`` to the pool (idle): queued calls start on it."""
        if any(actor is a for a in [*self._idle, *self._actor_of.values()]):
            raise ValueError("Actor already belongs to current ActorPool")
        self._release(actor)

    # -- inside --------------------------------------------------------------------------------

    def _start(self, fn: Callable[[Any, Any], Any], value: Any, ticket: int, actor: Any) -> None:
        ref = fn(actor, value)
        self._actor_of[ref] = actor
        self._ticket_of[ref] = ticket
        self._by_ticket[ticket] = ref

    def _release(self, actor: Any) -> None:
        """``actor`` is idle: it takes the oldest queued call, if any."""
        if self._queued:
            fn, value, ticket = self._queued.popleft()
            self._start(fn, value, ticket, actor)
        else:
            self._idle.append(actor)

    def _take(self, ref: Any, value: bool = True) -> Any:
        ticket = self._ticket_of.pop(ref)
        actor = self._actor_of.pop(ref, None)
        if ticket is not None:
            del self._by_ticket[ticket]
            if ticket == self._next:
                self._advance()
        if actor is not None:
            self._release(actor)
        return get(ref) if value else None

    def _advance(self) -> None:
        """Past the submissions already taken (out of order) or skipped."""
        self._next += 1
        queued_from = self._queued[0][2] if self._queued else self._tickets
        while self._next < queued_from and self._next not in self._by_ticket:
            self._next += 1

    def _free_one(self, timeout: float | None) -> None:
        """Wait until a busy actor has finished its call and give it the oldest queued one
        (the result stays to be taken)."""
        busy = list(self._actor_of)
        if not busy:
            raise StopIteration("No actor left in the pool to run the queued calls")
        ready, _ = wait(busy, num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError("Timed out waiting for result")
        self._release(self._actor_of.pop(ready[0]))
        if self._ticket_of.get(ready[0], 0) is None:  # abandoned: nothing to keep
            del self._ticket_of[ready[0]]

    def _abandon(self, ref: Any) -> None:
        ticket = self._ticket_of[ref]
        self._ticket_of[ref] = None
        if ticket is not None:
            del self._by_ticket[ticket]
            if ticket == self._next:
                self._advance()

    def _drop_pending(self) -> None:
        while self.has_next():
            try:
                self.get_next_unordered()
            except (TimeoutError, StopIteration):
                break
            except Exception:  # noqa: BLE001 (a dropped result's error is dropped with it)
                pass

    def _drain(self, take: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield take()
