"""The embedded cluster ``init()`` starts when no cluster is given, and its fast lane.

Runs in the driver (starting and tuning the cluster, fetching large values), in the embedded
scheduler (the lane's server end, a scheduler plugin) and in the embedded workers (the lane's
worker end, a worker plugin). A user's own cluster never gets any of it.

Layer rule: imports only the bottom modules (``exceptions``, ``_protocol``, ``_options``,
``_dask_internals``, ``_runtime``, ``_waiting``); never ``_scheduler``, its sibling, nor any
layer above (``_objects``, ``_worker``, ``_client``). ``tests/test_layers.py`` checks it.
"""
