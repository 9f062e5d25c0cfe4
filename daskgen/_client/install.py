"""What daskgen installs on the Dask cluster it connects to, when, and the checks before it
(runs in the driver, and in workers whose tasks use daskgen).

Installed, for the whole life of the scheduler: daskgen's scheduler plugin (``_scheduler``),
registered by ``init`` and again whenever the client reconnects to a scheduler that lacks it (a
scheduler restarted on the same address), and with it the workers' lane to the scheduler
(``_cluster.fastlane``: a port of daskgen's own, on ``tcp://`` schedulers). Both are harmless
to clients and workers without daskgen: they act only on daskgen's own tasks and messages,
keep daskgen's tasks off workers that cannot import daskgen, and answer ``daskgen_hello`` so
that daskgen's processes can tell they are there. Nothing is registered with the workers: they
install what daskgen needs there (output forwarding, the actor connections' handler) when they
first run a daskgen task, so a worker without daskgen that joins later starts as it would
anyway.

Checked at ``init(address=...)``: the scheduler and every worker can import daskgen, of this
version; else ``init`` refuses, naming each host and what to run there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed import Client

from .. import _dask_internals as dx
from .. import _runtime
from .._cluster.fastlane import FastLaneScheduler
from .._protocol import PLUGIN_NAME, VERSION
from .._scheduler.plugin import DaskgenSchedulerPlugin
from ..exceptions import RaySystemError

logger = logging.getLogger("daskgen")

FIX = f"pip install daskgen=={VERSION}"
FIRST_CONNECTION_POLL_S = 0.01  # s: how often a caller looks whether a first connection is up


def check_cluster(client: Client) -> None:
    """Refuse a cluster whose scheduler or workers cannot run daskgen (this version)."""
    address = client.scheduler.address
    problems = []
    scheduler_has = client.run_on_scheduler(dx.daskgen_probe())
    if scheduler_has != VERSION:
        problems.append(f"the scheduler at {address}: {_describe(scheduler_has)}")
    workers = client.run(dx.daskgen_probe(), on_error="return")
    for worker, has in sorted(workers.items()):
        if has != VERSION:
            problems.append(f"the worker {worker}: {_describe(has)}")
    if problems:
        raise RuntimeError(
            "daskgen must be installed, at the version this driver has "
            f"({VERSION}), on the Dask scheduler and on every worker; here it is missing or "
            "different on " + "; ".join(problems) + f". Run `{FIX}` in the environment of each "
            "of those processes and restart them (docs/existing-cluster.md)."
        )


def _describe(has: Any) -> str:
    if has is None:
        return "daskgen is not installed"
    if isinstance(has, BaseException):
        return f"the check failed ({has!r})"
    return f"daskgen {has} is installed"


def install(client: Client) -> None:
    """Register daskgen's scheduler plugin for ``client`` now (from a user's thread)."""
    client.sync(_install, client)


async def _install(client: Client) -> None:
    await dx.client_register_scheduler_plugin(client, DaskgenSchedulerPlugin(), PLUGIN_NAME)
    # The workers' lane to the scheduler (``_cluster.fastlane``), which the embedded cluster
    # has from its start: registered only where none is (Dask's idempotent registration).
    await dx.client_register_scheduler_plugin(client, FastLaneScheduler(), FastLaneScheduler.name)
    # Dask's task stream records from now on (what timeline() reads; Dask starts it this way,
    # and its dashboard too): bounded, and it records every client's tasks as it always does.
    await client.scheduler.get_task_stream(count=0)
    _runtime.served(client)


def _reinstall(client: Client) -> None:
    """The hook ``_runtime.send`` calls when the client's connection is not served: register the
    plugin again, on the client's loop (its first message after a reconnect waits for it)."""

    async def again() -> None:
        while client.status == "connecting":  # Dask reconnects for up to its connect timeout
            await asyncio.sleep(0.05)
        if client.status != "running":
            dropped = _runtime.held_back(client)
            logger.warning("daskgen: %d message(s) not sent: the client closed", len(dropped))
            return
        try:
            await _install(client)
        except Exception:
            logger.exception("daskgen: could not register its scheduler plugin again")

    dx.on_client_loop(client, again)


def ensure_served(client: Client) -> None:
    """Before a call goes to the scheduler (from a user's thread): daskgen's plugin serves the
    client's connection, registered again after a reconnect; while Dask is still reconnecting,
    fail at once instead of waiting for it."""
    if _runtime.is_served(client):
        return
    if client.status == "connecting" and not _runtime.was_served(client):
        _first_connection(client)
    if client.status == "connecting":
        raise RaySystemError(
            f"daskgen lost its connection to the Dask scheduler at {client.scheduler.address}; "
            "Dask is trying to reconnect. Calls fail until it has: retry once the scheduler is "
            "back (its workers must be restarted with it)."
        )
    if client.status != "running":
        raise RaySystemError(
            f"daskgen's Dask client is {client.status}: call daskgen.init() again."
        )
    install(client)


def _first_connection(client: Client) -> None:
    """Wait (bounded by Dask's connect timeout) while ``client`` makes its first connection: a
    worker's client that another of the worker's threads has just started (Dask's
    ``get_client`` in a task returns the default client while it still connects). Not a lost
    connection: nothing of daskgen's ever went on it."""
    limit = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    deadline = time.monotonic() + (limit or 30.0)
    while client.status == "connecting" and time.monotonic() < deadline:
        time.sleep(FIRST_CONNECTION_POLL_S)


_runtime.prepare_scheduler = _reinstall
