"""Yields into Dask collections, and Dask collections into refs (daskgen only: Ray has none).

* :func:`to_bag`, :func:`to_array`, :func:`to_dataframe`: a ``dask.bag.Bag``,
  ``dask.array.Array`` or ``dask.dataframe.DataFrame`` built on the keys that refs already hold
  in the cluster (the yields of a generator, task results, ``put`` values): no value is copied
  or moved, and one task per partition (see ``_collections``);
* :func:`from_collection`: the refs of a Dask collection's partitions, to pass to remote
  functions.

``docs/user-guide/dask-collections.md`` is the user's guide.

Runs in the caller's process (the driver), except ``_parts``, which runs in Dask tasks on the
workers. Layer rule: a public module, so it may import any of daskgen's layers; pandas and
``dask.dataframe`` only inside ``to_dataframe`` and the tasks it makes (``import daskgen`` never
needs pandas). Inside, ``_parts`` <- ``_inputs`` <- ``_collections``; ``_partitions`` alone.
"""

from __future__ import annotations

from ._collections import to_array, to_bag, to_dataframe
from ._partitions import from_collection

__all__ = ["from_collection", "to_array", "to_bag", "to_dataframe"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
