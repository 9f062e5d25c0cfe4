"""The caller's half of direct actor calls: one connection per (client, worker) carrying calls
to the actors on that worker, and the results coming back. Runs in the caller's process (the
driver, or a worker whose task calls actors); ``_worker.actor_host`` is the other half and
documents the messages.

A direct call's ref is an ``ObjectRef`` like any other, on a key the scheduler does not know
until it must: the connection owns it (``_objects.promotion``). Its small result comes inline
on the connection; dropping the ref sends ``release`` to the host instead of the scheduler; and
passing the ref on first promotes it to a real key.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any

from distributed import Client
from distributed.comm import CommClosedError, connect

from .. import _dask_internals as dx
from .._objects import promotion
from .._objects.refs import deliver_result
from .._protocol import ACTOR_STREAM_OP, WORKERS_OP, Key, as_key
from .._worker.actor_host import install
from ..exceptions import ActorDiedError, ActorUnavailableError, TaskCancelledError

logger = logging.getLogger("daskgen")

SEND_INTERVAL = 0.001  # s: batching of calls on daskgen's own connection

_channels: dict[tuple[int, str], Channel] = {}
_channels_lock = threading.Lock()
restartable: set[str] = set()  # actors with max_restarts (calls in flight: unavailable)
moved: dict[str, str] = {}  # actor id -> the worker it was restarted on

# max_task_retries: calls to such actors sent without a result yet, key -> [the call's message,
# tries left (-1: no limit)]; and the calls of an actor being restarted, waiting to be sent to
# its new worker: actor -> [(client, key, on_failed)].
retries: dict[Key, list[Any]] = {}
_parked: dict[str, list[tuple[Client, Key, Callable[[Any], None] | None]]] = {}
PARK_S = 60.0  # s: bound on waiting for the scheduler to say where the actor restarts


def _retry_later(ch: Channel, key: Key, actor: str, on_failed: Any) -> bool:
    """Keep a call to a restarting actor to send it again once it is back, if it has tries
    left (as Ray's max_task_retries); False: it fails now."""
    entry = retries.get(key)
    if entry is None or entry[1] == 0:
        retries.pop(key, None)
        return False
    if entry[1] > 0:
        entry[1] -= 1
    first = actor not in _parked
    _parked.setdefault(actor, []).append((ch.client, key, on_failed))
    where = moved.get(actor)
    if where is not None and where != ch.address:
        resend_parked(actor, where)
    elif first and ch.client.loop is not None:
        ch.client.loop.call_later(PARK_S, fail_parked, actor, None)
    return True


def resend_parked(actor: str, worker: str) -> None:
    """The actor is being restarted on ``worker``: send its parked calls there (they wait
    there for the new instance)."""
    for client, key, on_failed in _parked.pop(actor, []):
        entry = retries.get(key)
        if entry is not None:
            channel(client, worker).call(key, {**entry[0], "wait": False}, on_failed, actor)


def fail_parked(actor: str, error: BaseException | None) -> None:
    """The actor died for good (or never came back within ``PARK_S``)."""
    why = error or unavailable(actor, f"it did not come back within {PARK_S:.0f} s")
    for client, key, on_failed in _parked.pop(actor, []):
        retries.pop(key, None)
        _fail_key(client, key, on_failed, why)


def _fail_key(client: Client, key: Key, on_failed: Any, error: Any) -> None:
    promotion.disown(key)
    if on_failed is not None:
        on_failed(error)
    else:
        dx.key_set_error(client, key, error or TaskCancelledError())


def unavailable(actor: str, why: str) -> ActorUnavailableError:
    """Ray's error for a call in flight when a restartable actor's worker went away."""
    return ActorUnavailableError(
        f"The actor {actor} is unavailable: {why}. The task may or may not have been executed "
        "on the actor."
    )


def channel(client: Client, address: str) -> Channel:
    """This client's channel to the worker at ``address`` (made on first use)."""
    with _channels_lock:
        ch = _channels.get((id(client), address))
        if ch is None or ch.closed:
            ch = _channels[(id(client), address)] = Channel(client, address)
        return ch


class Channel:
    """Calls to the actors of one worker, and their results (see the module's docstring)."""

    def __init__(self, client: Client, address: str) -> None:
        self.client = client
        self.address = address
        # Calls sent without a result yet: key -> (actor, what to tell if it fails).
        self.pending: dict[Key, tuple[str, Callable[[Any], None] | None]] = {}
        self.closed = False
        self.failure: BaseException | None = None
        self._outbox: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._batched: Any = None
        self._connecting = False

    def pending_for(self, actor: str) -> int:
        """Calls to ``actor`` sent on this channel without their result yet."""
        return sum(1 for a, _ in list(self.pending.values()) if a == actor)

    # -- sending (any thread) ----------------------------------------------------------------

    def call(
        self,
        key: Key,
        msg: dict[str, Any],
        on_failed: Callable[[Any], None] | None,
        actor: str,
    ) -> None:
        """Send a call to ``actor``; its result arrives for ``key``. ``on_failed(error)`` is
        told if the call ends without a result on the scheduler's path (a generator call)."""
        with self._lock:
            if self.closed:
                failure = self.failure
            else:
                failure = None
                self.pending[key] = (actor, on_failed)
                promotion.own(key, self)  # the scheduler does not know the key yet
        if failure is not None:
            dx.on_client_loop(self.client, self._fail, key, on_failed, failure)
            return
        self.send(msg)

    def send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            if self.closed:
                return
            self._outbox.append(msg)
            first = len(self._outbox) == 1
        if first:
            try:
                dx.on_client_loop(self.client, self._flush)
            except Exception:  # the client is closing: its calls end with it
                pass

    def _flush(self) -> None:
        """On the client's loop: hand the queued messages to the connection, opening it once."""
        if self._batched is None:
            if not self._connecting:
                self._connecting = True
                asyncio.ensure_future(self._connect())
            return
        with self._lock:
            msgs, self._outbox = self._outbox, []
        for msg in msgs:
            self._batched.send(msg)

    async def _connect(self) -> None:
        try:
            # A worker the scheduler does not know (it left, or the scheduler was restarted)
            # is not tried: Dask would retry connecting to it for its connect timeout.
            found = await getattr(self.client.scheduler, WORKERS_OP)()
        except Exception as exc:
            found = exc
        if not isinstance(found, dict) or self.address not in found["able"]:
            self._lost(
                ActorDiedError(
                    "The actor died unexpectedly before finishing this task.\n"
                    f"The actor is dead because its worker {self.address} is not in the cluster "
                    "of the Dask scheduler any more (it left, or the scheduler was restarted)."
                )
            )
            return
        try:
            # The handler is registered by the actor's creation task; registering it here too
            # (idempotent) means a caller never races a creation still under way.
            await self.client.run(
                install, workers=[self.address], on_error="raise", asynchronous=True
            )
            comm = await connect(self.address, **self.client.connection_args)
            comm.name = "daskgen->actors"
            await comm.write({"op": ACTOR_STREAM_OP, "client": self.client.id, "reply": False})
        except Exception as exc:
            self._lost(
                ActorDiedError(
                    f"The actor's worker {self.address} cannot be reached for actor calls: "
                    f"{exc!r}. Is daskgen installed there (the same version as here)?"
                )
            )
            return
        self._batched = dx.batched_send(comm, SEND_INTERVAL)
        self._connecting = False
        self._flush()
        asyncio.ensure_future(self._read(comm))

    # -- receiving (on the client's loop) -----------------------------------------------------

    async def _read(self, comm: Any) -> None:
        try:
            while True:
                for msg in await comm.read():
                    self._on_reply(msg)
        except (CommClosedError, OSError):
            pass
        except Exception:
            logger.exception("daskgen: bad reply on the actor connection to %s", self.address)
        self._lost(
            ActorDiedError(
                "The actor died unexpectedly before finishing this task.\n"
                f"The actor is dead because its worker {self.address} closed the connection "
                "(it left the cluster, or its process died)."
            )
        )

    def _on_reply(self, msg: dict[str, Any]) -> None:
        key = as_key(msg["key"])
        if retries:
            retries.pop(key, None)
        if msg["op"] == "result":
            if self.pending.pop(key, None) is None:
                return  # it failed already (its actor died), or its ref was dropped
            deliver_result(self.client, key, msg["blob"])
        elif msg["op"] == "failed":  # a generator call that ended without its outcome
            entry = self.pending.pop(key, None)
            promotion.disown(key)
            blob = msg.get("blob")
            if entry is not None:
                self._fail(key, entry[1], pickle.loads(blob) if blob else None)

    def completed(self, key: Key) -> None:
        """The scheduler announced ``key`` (published by the host): it is a real key now."""
        self.pending.pop(key, None)
        retries.pop(key, None)

    def released(self, key: Key) -> None:
        """The caller dropped the ref of ``key`` (the host is told by the release message)."""
        self.pending.pop(key, None)
        retries.pop(key, None)

    def _fail(self, key: Key, on_failed: Callable[[Any], None] | None, error: Any) -> None:
        _fail_key(self.client, key, on_failed, error)

    def _lost(self, error: BaseException) -> None:
        """The connection is gone: every call on it without a result fails with ``error``."""
        with self._lock:
            self.closed = True
            self.failure = error
            pending, self.pending = self.pending, {}
            self._outbox.clear()
        with _channels_lock:
            if _channels.get((id(self.client), self.address)) is self:
                del _channels[(id(self.client), self.address)]
        for key, (actor, on_failed) in pending.items():
            if actor in restartable:
                if not _retry_later(self, key, actor, on_failed):
                    why = f"its worker {self.address} left"
                    self._fail(key, on_failed, unavailable(actor, why))
            else:
                self._fail(key, on_failed, error)
        promotion.owner_lost(self, error)

    def fail_actor(self, actor: str, error: BaseException) -> None:
        """The actor died (the scheduler says so, or it was killed): its calls without a
        result fail (on the client's loop)."""
        for key in [k for k, (a, _) in self.pending.items() if a == actor]:
            _, on_failed = self.pending.pop(key)
            if isinstance(error, ActorUnavailableError) and _retry_later(
                self, key, actor, on_failed
            ):
                continue
            self._fail(key, on_failed, error)


def cancel_actor_call(key: Key, force: bool) -> bool:
    """``cancel()`` of a direct actor call still without its result: ask its host (see
    ``ActorHost.cancel``). False if ``key`` is no such call."""
    ch = promotion.owner_of(key)
    if not isinstance(ch, Channel) or key not in ch.pending:
        return False
    if force:
        raise ValueError("force=True is not supported for actor tasks.")
    ch.send({"op": "cancel", "key": key})
    return True
