"""Named actors, by namespace (runs in the scheduler's process, inside daskgen's plugin).

Ray scopes an actor's name by a namespace: the creating job's, unless the actor's
``namespace=`` option says another. The same name may be taken once in each namespace; a
lookup without a namespace is made in the caller's job's (the client sends it). An entry goes
when its actor dies or is killed; a detached actor's entry stays, in its namespace, after its
driver has gone.

Routes (request handlers, added by ``DaskgenSchedulerPlugin.start``):

* ``daskgen_actor_register`` {namespace, name, state, actor}: False if the name is taken there;
* ``daskgen_actor_lookup`` {namespace, name}: the pickled handle, or None;
* ``daskgen_actor_names`` {namespace}: ``[namespace, name]`` pairs of the live named actors (in
  that namespace; in all of them if it is None);
* ``daskgen_actor_name`` {actor}: the name actor ``actor`` was created with ("" if none).
"""

from __future__ import annotations

from typing import Any


class NamedActors:
    """The registry: (namespace, name) -> the pickled handle of a live actor."""

    def __init__(self) -> None:
        self.handles: dict[tuple[str, str], bytes] = {}
        self.of_actor: dict[str, tuple[str, str]] = {}  # actor id -> (namespace, name)

    @property
    def routes(self) -> dict[str, Any]:
        """Request handler name -> handler (see the module's docstring)."""
        return {
            "daskgen_actor_register": self.register,
            "daskgen_actor_lookup": self.lookup,
            "daskgen_actor_names": self.names,
            "daskgen_actor_name": self.name,
        }

    def register(self, namespace: str, name: str, state: bytes, actor: str) -> bool:
        entry = (namespace, name)
        if entry in self.handles:
            return False
        self.handles[entry] = state
        self.of_actor[actor] = entry
        return True

    def lookup(self, namespace: str, name: str) -> bytes | None:
        return self.handles.get((namespace, name))

    def names(self, namespace: str | None = None) -> list[list[str]]:
        return [
            [ns, name] for ns, name in sorted(self.handles) if namespace is None or ns == namespace
        ]

    def name(self, actor: str) -> str:
        entry = self.of_actor.get(actor)
        return entry[1] if entry is not None else ""

    def forget(self, actor: str) -> None:
        """``actor`` died: its name is free again."""
        entry = self.of_actor.pop(actor, None)
        if entry is not None:
            self.handles.pop(entry, None)
