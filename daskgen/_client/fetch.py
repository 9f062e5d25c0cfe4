"""``get`` of large values straight from the workers holding them, over the wire
(``_worker.actor_wire``), where the embedded cluster's lane does not serve them.

Why: Dask's gather of an 8 MB array from a worker of a real cluster took ~7.5 ms (median) here,
and 20 streamed 8 MB yields reached the driver at ~0.6 GB/s against Ray's ~1-1.7 GB/s; the wire
carries the value in ~2.4 ms (its Unix socket, caller and worker on one host; ~3-3.5 ms over
TCP), received straight into the buffers it is built on. The worker is the one the scheduler
named when it announced the yield (``_objects.locations``); the connection is the caller's
wire to that worker (``actor_channel.Channel``: opened on first use through ``Client.run``, so
over the cluster's security; TLS clusters answer over Dask's comm with nothing, and Dask's
gather fetches). Whatever the worker does not hold (a stale hint),
cannot pickle, or does not send within ``FETCH_TIMEOUT_S``, Dask's gather fetches.

Only in a driver (or any process outside a task): inside a task the worker's own client gets
values, and the holder may be that very worker.
"""

from __future__ import annotations

import time
from typing import Any

from distributed import Client

from .. import _runtime
from .._objects import locations, resolve
from .actor_channel import channel

# A value that has not arrived by then is fetched by Dask's gather instead (and the late copy
# dropped): generous, as a large value may take a while, bounded, as a get must not hang.
FETCH_TIMEOUT_S = 30.0

fetched = 0  # values this process took by the wire (tests look)


def fetch_direct(client: Client, keys: list[Any]) -> dict[Any, Any]:
    """The values of those ``keys`` whose holder is known, by key (see the module's doc)."""
    global fetched
    if _runtime.in_worker_task() is not None or client.asynchronous:
        return {}
    by_worker = locations.holders(keys)
    if not by_worker:
        return {}
    asked = [(channel(client, worker), held) for worker, held in by_worker.items()]
    requests = [(ch, ch.ask(held)) for ch, held in asked]
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    out: dict[Any, Any] = {}
    for ch, request in requests:
        if request is not None:
            out.update(ch.wait_fetched(request, deadline - time.monotonic()))
    fetched += len(out)
    return out


resolve.fetch_direct = fetch_direct
