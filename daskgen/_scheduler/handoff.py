"""Streams passed from one process to another: the scheduler's half of handing a streaming
generator to another task or actor (``_objects.handoff`` is the clients' half; runs in the
scheduler's process, inside daskgen's plugin).

A generator task's yields go to the client that holds its generator: at first its caller (the
``caller`` each ``daskgen-publish`` names); once the generator is passed to another task or
actor, that consumer's client. :class:`StreamHandoffs` keeps, per generator task handed over, a
:class:`Route`: who receives the stream now, and the handoffs it went through. Routes it adds
(registered by the plugin, :attr:`StreamHandoffs.routes`):

* ``daskgen-handoff`` {client, task, token, start, seen, source, source_token, backpressure,
  local}: the consumer's client takes the stream of ``task`` from index ``start``, from
  ``source`` (the client that held it, by handoff ``source_token``; None: the task's caller).
  At once, on the scheduler's loop: the route moves; every yield from ``start`` on that the
  scheduler holds is wanted by the consumer too; the consumer gets ``daskgen-takeover`` {task,
  token, items: [(key, index), ...]} and then wants the task itself (its end is reported
  behind every yield); ``source`` gets ``daskgen-handed`` {task, token, taken: True} and lets
  its futures of those yields go. So no yield is delivered twice, none is lost, and each key
  always has a holder. ``seen``: the yields ``source`` knew of when it passed the generator
  (below it, a yield lost with its worker is a gap, not the end). ``local``: source and
  consumer share a process and a state: only the handoff is recorded.
  A handoff for a task the scheduler does not know yet waits for it (up to ``PARK_S``): the
  caller's graph and a direct actor call (straight to the actor's worker) race each other.
  Refused (``daskgen-takeover`` with ``error``) when the task is gone, when this handoff was
  taken already (the same arguments unpickled again: a consumer re-run after its worker died,
  or retried), when the consumer that held the stream is gone, or when ``source`` no longer
  holds it.
* ``daskgen-handoff-drop`` {task, token, backpressure}: the call the generator was passed to
  ended without taking it (it never ran): the handoff can no longer be taken, and ``source``
  hears ``daskgen-handed`` {taken: False} (it lets the yields go, and a paused producer run).

The stream's owner alone may let a paused producer run to its end (a ``daskgen-consumed`` at
``NO_CONSUMER_INDEX``): a previous owner dropping its generator must not. When the owner's
client leaves (its worker died), the yields still to come are freed as they are published
(the plugin's publish finds no owner), and a paused producer is let go: by Dask's ``run`` on the
worker processing the task (``_worker.let_go``), which is safe on a worker that has not started
it yet (a ``daskgen-consumed`` there, before any producer registered its handler, would close
the worker's connection); if it had not, the producer is let go when it publishes, as it must
before it can pause.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from .. import _dask_internals as dx
from .._protocol import (
    HANDED_OP,
    HANDOFF_DROP_OP,
    HANDOFF_OP,
    LET_GO,
    TAKEOVER_OP,
    Key,
    as_key,
    yield_key,
)

logger = logging.getLogger("daskgen")

GONE = ""  # the owner of a stream whose consumer's client has left
PARK_S = 30.0  # s: how long a handoff waits for its generator task to reach the scheduler


@dataclass
class Route:
    """Who receives one generator task's stream, and through which handoffs it went."""

    owner: str  # client id ("" once that client has left)
    token: str | None  # the handoff by which the owner got it (None: the task's caller)
    used: set[str] = field(default_factory=set)  # every handoff taken or dropped
    backpressure: bool = False  # the producer pauses for its consumer
    released: bool = False  # nobody consumes it any more: the producer runs to its end
    let_go: str | None = None  # the worker whose producer was let run on unpaused
    asking: str | None = None  # the worker being asked to (a ``run`` call in flight)


class StreamHandoffs:
    """Per generator task handed over: who receives its yields (see the module's docstring)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.streams: dict[Key, Route] = {}
        # Handoffs of tasks the scheduler does not know yet: task -> their arguments.
        self.parked: dict[Key, list[tuple[Any, ...]]] = {}

    @property
    def routes(self) -> dict[str, Any]:
        """Batched-stream op -> handler (from clients)."""
        return {HANDOFF_OP: self.on_handoff, HANDOFF_DROP_OP: self.on_drop}

    # -- what the plugin asks -----------------------------------------------------------------

    def owner(self, task: Key, caller: str, worker: str) -> str:
        """Who receives the yields ``worker`` publishes for ``task``: ``caller`` unless the
        stream was handed over ("" once its consumer is gone)."""
        route = self.streams.get(task)
        if route is None:
            return caller
        if route.released and route.let_go != worker:
            self._let_go(task, route)
        return route.owner

    def nobody_consumes(self, task: Key, client: str) -> bool:
        """``client`` let go of ``task``'s stream (it dropped its generator): if ``task`` was
        handed over, let its producer run on only if ``client`` owns the stream, and say that
        this is handled (True); False leaves it to the plugin."""
        route = self.streams.get(task)
        if route is None:
            return False
        if route.owner == client:
            self._let_go(task, route)
        return True

    def client_left(self, client: str) -> None:
        """The streams ``client`` received have no consumer any more: what is still to come is
        freed as it is published, and a paused producer runs to its end."""
        for task, route in self.streams.items():
            if route.owner == client:
                route.owner = GONE
                self._let_go(task, route)

    def arrived(self, keys: Any) -> None:
        """Tasks were submitted: the handoffs waiting for them go on (once they are in)."""
        ready = [args for key in keys for args in self.parked.pop(key, ())]
        if ready:
            asyncio.get_running_loop().call_soon(self._resume, ready)

    def _resume(self, ready: list[tuple[Any, ...]]) -> None:
        for args in ready:
            self._try_handoff(*args)

    def _expire(self, args: tuple[Any, ...]) -> None:
        waiting = self.parked.get(args[1])
        if waiting is None or args not in waiting:
            return
        waiting.remove(args)
        if not waiting:
            del self.parked[args[1]]
        self._try_handoff(*args)  # refused now if the task is still unknown

    def forget(self, task: Key) -> None:
        """``task`` is forgotten: nobody holds its stream any more."""
        self.streams.pop(task, None)

    # -- routes --------------------------------------------------------------------------------

    def on_handoff(
        self,
        client: str,
        task: Any,
        token: str,
        start: int,
        seen: int,
        source: str,
        source_token: str | None = None,
        backpressure: bool = False,
        local: bool = False,
        **_: Any,
    ) -> None:
        args = (client, as_key(task), token, start, seen, source, source_token, backpressure, local)
        task = args[1]
        if dx.scheduler_key_state(self.scheduler, task) is None:
            # Maybe not here yet: the caller's graph may be behind a direct actor call.
            self.parked.setdefault(task, []).append(args)
            asyncio.get_running_loop().call_later(PARK_S, self._expire, args)
            return
        self._try_handoff(*args)

    def _try_handoff(self, *args: Any) -> None:
        try:
            self._handoff(*args)
        except Exception:  # never let an error close the client's stream
            logger.exception("daskgen: failed to hand the stream of %s to %s", args[1], args[0])

    def _handoff(
        self,
        client: str,
        task: Key,
        token: str,
        start: int,
        seen: int,
        source: str,
        source_token: str | None,
        backpressure: bool,
        local: bool,
    ) -> None:
        s = self.scheduler
        if not dx.scheduler_has_client(s, client):
            return  # it left already (a want of it would make Dask invent it)
        route = self.streams.get(task)
        why = self._refusal(task, route, token, source_token)
        reply: dict[str, Any] = {"op": TAKEOVER_OP, "task": task, "token": token}
        if why is not None:
            dx.scheduler_send_to_client(s, client, {**reply, "error": why})
            return
        if route is None:
            route = self.streams[task] = Route(source, None)
        route.used.add(token)
        route.token = token
        route.backpressure = bool(backpressure)
        if local:  # the same state in the same process: the owner stays the same client
            dx.scheduler_send_to_client(s, client, {**reply, "local": True})
            return
        previous = route.owner
        route.owner = client
        items = self._untaken(task, start, seen)
        if items:
            dx.scheduler_desire(s, [key for key, _ in items], client)
        dx.scheduler_send_to_client(s, client, {**reply, "items": items})
        # After the takeover: the consumer hears of the task's end behind every yield.
        dx.scheduler_desire(s, [task], client)
        if previous != client and dx.scheduler_has_client(s, previous):
            msg = {"op": HANDED_OP, "task": task, "token": token, "taken": True}
            dx.scheduler_send_to_client(s, previous, msg)

    def _refusal(
        self, task: Key, route: Route | None, token: str, source_token: str | None
    ) -> str | None:
        """Why this handoff cannot be taken (None: it can)."""
        if dx.scheduler_key_state(self.scheduler, task) is None:
            return (
                f"its generator task {task!r} is gone (every process that held it released it, "
                "or it was cancelled)"
            )
        if route is not None and token in route.used:
            return (
                f"the stream of {task!r} was handed over by these very arguments already: a "
                "streaming generator is consumed once, so a call that runs again (its worker "
                "died, or it was retried) cannot replay it"
            )
        if route is not None and route.owner == GONE:
            return f"the process consuming the stream of {task!r} is gone (its worker died)"
        current = None if route is None else route.token
        if current != source_token:
            return f"the stream of {task!r} was handed to another consumer first"
        return None

    def _untaken(self, task: Key, start: int, seen: int) -> list[tuple[Key, int]]:
        """The yields of ``task`` from ``start`` on that the cluster holds, in order. Below
        ``seen`` a missing index is a gap (a yield lost with its worker); from there on the
        published ones are consecutive, and the first missing one is the end."""
        s = self.scheduler
        items: list[tuple[Key, int]] = []
        index = start
        while True:
            key = yield_key(task, index)
            state = dx.scheduler_key_state(s, key)
            if state is None and index >= seen:
                return items
            if state == "memory":
                items.append((key, index))
            index += 1

    def on_drop(
        self, client: str, task: Any, token: str, backpressure: bool = False, **_: Any
    ) -> None:
        try:
            task = as_key(task)
            s = self.scheduler
            route = self.streams.get(task)
            if route is not None and token in route.used:
                return  # taken: ``client`` hears it by daskgen-handed
            if dx.scheduler_key_state(s, task) is not None:
                if route is None:
                    route = self.streams[task] = Route(client, None)
                    route.backpressure = bool(backpressure)
                route.used.add(token)  # a consumer that comes after all is refused
            msg = {"op": HANDED_OP, "task": task, "token": token, "taken": False}
            dx.scheduler_send_to_client(s, client, msg)
        except Exception:
            logger.exception("daskgen: failed to drop a handoff of %s", task)

    def _let_go(self, task: Key, route: Route) -> None:
        """Nobody consumes ``task``'s stream: its paused producer runs to its end."""
        route.released = True
        if not route.backpressure:
            return
        worker = dx.scheduler_processing_on(self.scheduler, task)
        if worker is not None and worker not in (route.let_go, route.asking):
            route.asking = worker
            asyncio.ensure_future(self._ask_to_let_go(task, route, worker))

    async def _ask_to_let_go(self, task: Key, route: Route, worker: str) -> None:
        try:
            found = await dx.scheduler_run_on_worker(self.scheduler, worker, LET_GO, task)
        except Exception:  # the worker is gone, and its producer with it
            logger.debug("daskgen: could not let %s go on %s", task, worker, exc_info=True)
            found = False
        route.asking = None
        if found:
            route.let_go = worker
