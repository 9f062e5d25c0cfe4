"""What Dask runs inside a task. Runs in the worker processes: the user's function
(``run.TaskSpec``), publishing each yield as a key (``publish``), hosting actors and serving
their callers' connections (``actor_host``), stopping a task that ``cancel()`` reached
(``interrupt``), and forwarding what tasks print (``output``).

Layer rule: imports the bottom modules, ``_cluster`` (the fast lane's worker end) and
``_objects`` (decoding argument values); never ``_scheduler`` or ``_client``.
``tests/test_layers.py`` checks it.
"""
