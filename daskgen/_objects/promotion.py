"""Refs whose key the scheduler does not know yet: the results of direct actor calls, and a
call's stored arguments until their worker has published them (runs in the caller's process).
``_client.actor_channel`` and ``_client.stored_args`` make them; ``_worker.actor_host``
documents how they live on the worker.

Such a key is **owned** by the connection its call went on (anything with ``send(msg)``,
``completed(key)`` and ``released(key)``). Dropping the last ref releases the key to its owner
instead of the scheduler; passing the ref on (to a task, another actor, another process) first
**promotes** it: the owner asks the actor's worker to publish the value, and the scheduler's
announcement (``daskgen-yield`` at ``OUTCOME_INDEX``) makes it a real key held by this client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from distributed import Client

from .. import _dask_internals as dx
from .. import _runtime
from .._protocol import RELEASE_OP, Key, pack_keys
from ..exceptions import RayActorError

_owners: dict[Key, Any] = {}  # unpromoted direct-call keys this process holds -> their owner
_promoting: dict[Key, list[Callable[[BaseException | None], None]]] = {}  # key -> when done


def own(key: Key, owner: Any, publishing: bool = False) -> None:
    """``key`` (a direct call's, or stored arguments') is ``owner``'s until the scheduler
    knows it; ``publishing``: it is being published already (``promote`` asks for nothing)."""
    _owners[key] = owner
    if publishing:
        _promoting.setdefault(key, [_hold])


def owner_of(key: Key) -> Any:
    return _owners.get(key)


def is_unpromoted(key: Key) -> bool:
    return key in _owners


def disown(key: Key) -> None:
    _owners.pop(key, None)


def _route_releases(client: Client, keys: list[Key]) -> None:
    """Released keys of unpromoted direct calls go to their owner; the rest to daskgen's
    scheduler plugin, which frees them in bulk (``dx.scheduler_release``)."""
    rest = keys if not _owners else _to_owners(keys)
    if rest:
        others, indexed = pack_keys(rest)
        _runtime.send(client, {"op": RELEASE_OP, "keys": others, "indexed": indexed})


def _to_owners(keys: list[Key]) -> list[Key]:
    rest = []
    by_owner: dict[Any, list[Key]] = {}
    for key in keys:
        owner = _owners.pop(key, None)
        if owner is None:
            rest.append(key)
        else:
            owner.released(key)
            by_owner.setdefault(owner, []).append(key)
    for owner, released in by_owner.items():
        owner.send({"op": "release", "keys": released})
    return rest


dx.route_releases(_route_releases)


def promote(key: Key, done: Callable[[BaseException | None], None]) -> None:
    """Make the direct-call result ``key`` a real cluster key held by this client; call
    ``done(None)`` once the scheduler announced it, or ``done(error)`` if it cannot be (on the
    client's loop)."""
    owner = _owners.get(key)
    if owner is None:
        done(None)  # known to the scheduler already
        return
    waiting = _promoting.setdefault(key, [])
    waiting.append(done)
    if len(waiting) == 1:
        owner.send({"op": "promote", "keys": [key]})


def _hold(error: BaseException | None) -> None:
    """Marks a key whose publication is under way (see ``own``)."""


def on_published(key: Key) -> None:
    """The scheduler announced ``key``, published by an actor's worker (on the client's loop):
    a real key now."""
    owner = _owners.pop(key, None)
    if owner is not None:
        owner.completed(key)
    for callback in _promoting.pop(key, []):
        callback(None)


def known(key: Key) -> None:
    """``key`` is a key the scheduler knows now, held by this client (a direct task call was
    submitted to it, see ``_client.direct``; on the client's loop): what waited for that goes
    on, and dropping its ref releases it at the scheduler."""
    _owners.pop(key, None)
    for callback in _promoting.pop(key, []):
        callback(None)


def owner_lost(owner: Any, error: BaseException) -> None:
    """``owner``'s connection is gone: its keys will never be promoted."""
    for key in [k for k, o in _owners.items() if o is owner]:
        del _owners[key]
        for callback in _promoting.pop(key, []):
            callback(error)


def promote_now(key: Key, client: Client) -> None:
    """Promote ``key`` and wait for it (a ref pickled outside ``.remote()``, e.g. into ``put``);
    on the client's own loop (where waiting would deadlock) the promotion is only started."""
    if not is_unpromoted(key):
        return
    done = threading.Event()
    errors: list[BaseException] = []

    def finished(error: BaseException | None) -> None:
        if error is not None:
            errors.append(error)
        done.set()

    dx.on_client_loop(client, promote, key, finished)
    if dx.on_loop_thread(client):
        return
    done.wait()  # the worker answers, or its connection closes (then the error is set)
    if errors:
        raise RayActorError(f"The actor result {key!r} cannot be passed on: {errors[0]}")
