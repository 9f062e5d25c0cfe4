"""daskgen's scheduler extension (``plugin.DaskgenSchedulerPlugin``): the routes and hooks
daskgen adds to a Dask scheduler.

Runs in the scheduler's process: the embedded one, or a user's ``dask scheduler`` (which must
have daskgen installed).

Layer rule: imports only the bottom modules (``exceptions``, ``_protocol``, ``_options``,
``_dask_internals``, ``_runtime``, ``_waiting``); never ``_cluster``, its sibling, nor any layer
above. Worker functions it runs on workers are named, not imported (``_protocol.INTERRUPT``).
``tests/test_layers.py`` checks it.
"""
