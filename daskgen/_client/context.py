"""``get_runtime_context()`` and ``progress()``: where am I running, and how far along is it."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import distributed

from .. import _dask_internals as dx
from .. import _runtime
from .._objects.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from .._objects.refs import ObjectRef
from .._runtime import current_actor, current_call, current_resources, in_worker_task


class RuntimeContext:
    """What Ray's ``get_runtime_context()`` answers, for the code calling it."""

    def get_task_id(self) -> str | None:
        """The Dask key of the running task (or actor call); None in the driver."""
        call = current_call.get()
        if call is not None:
            return call
        worker = in_worker_task()
        if worker is None:
            return None
        try:
            key = worker.get_current_task()
        except KeyError:
            return None
        return str(key)

    def get_node_id(self) -> str:
        """The address of the Dask worker running this code (the driver: its client's id)."""
        worker = in_worker_task()
        return worker.address if worker is not None else _runtime.client().id

    def get_worker_id(self) -> str:
        """The same as ``get_node_id()``: each Dask worker is its own node here."""
        return self.get_node_id()

    def get_actor_id(self) -> str | None:
        """The id of the actor whose method is running, else None."""
        return current_actor.get()

    def get_job_id(self) -> str:
        """The id of the client that started this work (Ray's driver job)."""
        return _runtime.client().id

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task holds (``{"CPU": 1.0}`` for a default task; ``{}``
        in an actor's method, which holds none of its own). Only inside tasks and actors, as
        on Ray."""
        if current_actor.get() is not None:
            return {}
        held = current_resources.get()
        if held is not None:  # a direct call (``_worker.direct``)
            return {name: float(n) for name, n in held.items()}
        worker = in_worker_task()
        key = dx.worker_current_key(worker) if worker is not None else None
        if worker is None or key is None:
            raise AssertionError(
                "This method is only available when the process is a worker (inside a task "
                "or an actor)."
            )
        return {name: float(n) for name, n in dx.worker_current_resources(worker, key).items()}

    def get_actor_name(self) -> str | None:
        """The name the running actor was created with ("" if none); None outside actors."""
        actor = current_actor.get()
        if actor is None:
            return None
        client = _runtime.client()
        return str(client.sync(client.scheduler.daskgen_actor_name, actor=actor))

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators of the running task or actor, by kind (``GPU``: see
        ``get_gpu_ids``)."""
        from .introspection import get_gpu_ids

        return {"GPU": [str(i) for i in get_gpu_ids()]}

    @property
    def namespace(self) -> str:
        """The job's namespace: the driver's ``init(namespace=...)``, else an anonymous one;
        inside a task or actor, the namespace of the driver that made the call."""
        return _runtime.job().namespace

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def actor_id(self) -> str | None:
        return self.get_actor_id()

    def __repr__(self) -> str:
        return (
            f"RuntimeContext(task_id={self.get_task_id()!r}, node_id={self.get_node_id()!r}, "
            f"actor_id={self.get_actor_id()!r})"
        )


def get_runtime_context() -> RuntimeContext:
    """The task id, worker (node) id and actor id of the code that calls it."""
    return RuntimeContext()


def progress(work: Any, *, notebook: bool | None = None) -> Any:
    """Show a progress bar for refs, or count a streaming generator's items as they arrive.

    * a ref or a list of refs: Dask's own progress bar (``distributed.progress``): a text bar in
      a terminal, a widget in Jupyter; blocks until they are done (like Dask's, in a terminal);
    * a ``DynamicObjectRefGenerator``: the same, over its refs;
    * an ``ObjectRefGenerator`` (streaming: the total is unknown): returns an iterator over its
      refs that shows how many have arrived; iterate it instead of the generator.
    """
    if isinstance(work, ObjectRefGenerator):
        return _StreamProgress(work)
    if isinstance(work, ObjectRef):
        work = [work]
    if isinstance(work, DynamicObjectRefGenerator):
        work = list(work._refs)
    if not isinstance(work, list) or not all(isinstance(r, ObjectRef) for r in work):
        raise TypeError(
            "progress() takes a ref, a list of refs, a DynamicObjectRefGenerator or a streaming "
            f"ObjectRefGenerator, not {type(work).__name__}"
        )
    _runtime.client()
    return distributed.progress([r._future for r in work], notebook=notebook)


class _StreamProgress(Iterable[ObjectRef]):
    """Iterates a streaming generator, printing ``name: N items`` as they arrive."""

    def __init__(self, gen: Any) -> None:
        self._gen = gen
        self._name = str(gen.task_key()).rpartition("-")[0]

    def __iter__(self) -> Iterator[ObjectRef]:
        try:
            from tqdm.auto import tqdm  # a real bar when tqdm is installed
        except ImportError:
            tqdm = None
        if tqdm is not None:
            yield from tqdm(self._gen, desc=self._name, unit="item")
            return
        n = 0
        for ref in self._gen:
            n += 1
            sys.stderr.write(f"\r{self._name}: {n} items")
            sys.stderr.flush()
            yield ref
        sys.stderr.write(f"\r{self._name}: {n} items, done\n")
