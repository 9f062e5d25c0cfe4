"""The user's side of daskgen. Runs in the process that calls the API (the driver, or a worker
whose task calls remote functions): ``init``/``shutdown`` (``session``), remote functions and
their submission, actors and the connections their calls travel on, ``get``/``put``/``wait``/
``cancel``, the runtime context, and the driver's half of output forwarding.

Layer rule: may import every layer below it (the bottom modules, ``_cluster``, ``_scheduler``,
``_objects``, ``_worker``); imported only by the public face (``daskgen/__init__.py``).
It registers two hooks in ``_runtime`` (starting a session on first use, preparing a worker's
client) so that lower layers never import it. ``tests/test_layers.py`` checks it.
"""
