"""Ray's ``ray.actor`` names: an actor class (``@remote`` on a class), a handle to an actor, and
one of its methods, for type hints and ``isinstance`` as Ray code uses them."""

from __future__ import annotations

from ._client.actors import ActorClass, ActorHandle, ActorMethod

__all__ = ["ActorClass", "ActorHandle", "ActorMethod"]
