"""The objects a caller holds: ``ObjectRef``, the two generator classes, the caller-side state
of each generator call, the refs of direct actor calls not known to the scheduler yet, and what
``get``/``wait`` do with them (one O(n) waiter, then fetching and decoding values).

Runs in every process that holds refs: the driver, and workers whose tasks take or get refs.

Layer rule: imports the bottom modules and ``_cluster`` (the embedded cluster's fast lane for
large values); never ``_scheduler``, ``_worker`` or ``_client``. Inside, ``promotion`` <-
``refs`` <- ``genstate`` <- ``generators`` <- ``resolve``, ``handoff``; ``resolve`` registers
itself with ``refs`` for ``ObjectRef.future()``, and ``handoff`` (passing a streaming generator
to another task) with ``generators`` for pickling one. ``tests/test_layers.py`` checks it.
"""
