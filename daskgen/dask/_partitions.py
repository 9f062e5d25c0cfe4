"""``from_collection`` (in the caller's process): refs of a Dask collection's partitions, to pass
to remote functions or to ``get``.

A persisted collection's graph holds a future per partition: a bag's or an array's maps each
key to its future, a ``dask.dataframe`` collection's renames each partition's key to the
future's (``Alias``). The refs are new futures of those keys, held by daskgen's client: the
values stay in the cluster as long as a ref does, whatever becomes of the collection.
"""

from __future__ import annotations

from typing import Any

from distributed import Future

from .. import _dask_internals as dx
from .. import _runtime
from .._objects.refs import ObjectRef


def from_collection(collection: Any) -> list[ObjectRef]:
    """The refs (``ObjectRef``) of a Dask collection's partitions (a bag's partitions, a
    dataframe's or series', an array's blocks in row-major order), to pass to remote functions
    (at the top level a task gets the partition itself; nested, a ref) or to ``get``.

    A persisted collection's partitions are its keys in memory: no task runs. One not persisted
    yet is persisted first (``Client.persist``: its computation starts now, and each ref is
    ready when its partition is, as a task's ref is). Returns at once. Raises ``TypeError`` for
    what is not a Dask collection.
    """
    import dask

    if not dask.is_dask_collection(collection):
        raise TypeError(
            f"from_collection: collection must be a Dask collection (a bag, array or "
            f"dataframe), not a {type(collection).__name__}."
        )
    client = _runtime.client()
    futures = _partition_futures(collection)
    if futures is None:
        futures = _partition_futures(client.persist(collection))
    if futures is None:
        raise RuntimeError(
            f"from_collection: the persisted {type(collection).__name__} has partitions "
            "that are not futures (a Dask release may have changed how it persists)."
        )
    return [ObjectRef(dx.light_future(future.key, client)) for future in futures]


def _partition_futures(collection: Any) -> list[Future] | None:
    """The future of each partition of a persisted collection, in order (None if one of them
    is not a future: the collection is not persisted, or only partly)."""
    from dask.core import flatten
    from distributed import futures_of

    held = {future.key: future for future in futures_of(collection)}
    if not held:
        return None
    graph = collection.__dask_graph__()
    out = []
    for key in flatten(collection.__dask_keys__()):
        seen = set()
        while key not in held:
            seen.add(key)
            key = dx.alias_target(graph.get(key))
            if key is None or key in seen:
                return None
        out.append(held[key])
    return out
