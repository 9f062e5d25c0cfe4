"""Connecting to Dask: ``init``, ``shutdown``, ``is_initialized``, ``get_client``.

Three ways in, as Ray's ``init`` has: an embedded ``LocalCluster`` that daskgen owns, an existing
scheduler's address (argument or ``DASKGEN_ADDRESS``), or a ``distributed.Client`` the user made.
Inside a Dask task every entry point uses that worker's own client instead.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, SpecCluster

from .. import _dask_internals as dx
from .. import _runtime
from .._cluster.embedded import start_cluster, tune, untune, wait_for_workers
from .._job import Job
from .._objects import handoff
from .._objects.genstate import on_cancelled_keys, on_yield_message
from .._objects.refs import on_lost_message, on_result_message
from .._protocol import ACTOR_DIED_OP, HANDED_OP, LOST_OP, RESULT_OP, TAKEOVER_OP, YIELD_OP
from . import lost_workers
from .actor_channel import close_channels
from .actors import on_actor_died
from .install import check_cluster, install
from .output import forward_to
from .ray_init import resolve_address, take_ray_keywords
from .runtime_env import Shipped, prepare, release


@dataclass
class _Session:
    client: Client
    cluster: SpecCluster | None  # owned: closed by shutdown()
    owns_client: bool
    log_to_driver: bool = True  # show here what the calls made from here print
    # Ray's job: its namespace (init(namespace=), else an anonymous one) and runtime_env, which
    # every call made from here carries (see _job); what the runtime_env shipped (_shipped).
    job: Job = field(default_factory=lambda: Job(""))
    namespace_given: bool = False
    shipped: Shipped = field(default_factory=Shipped)
    # what each worker declares, as last read from the scheduler (for placement checks)
    resources: list[dict[str, float]] = field(default_factory=list)


_lock = threading.RLock()
_atexit_registered = False
_ready_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def init(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resources: dict[str, float] | None = None,
    client: Client | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    **cluster_kwargs: Any,
) -> Client:
    """Connect daskgen to a Dask cluster and return the ``distributed.Client`` it uses.

    * ``client=``: use that client as is (daskgen never closes it).
    * ``address=`` or the ``DASKGEN_ADDRESS`` environment variable: connect to that scheduler;
      ``shutdown()`` closes daskgen's client, never the cluster. ``cluster_kwargs`` go to
      ``Client`` (``security=`` for TLS, ``timeout=``...).
    * neither: start an embedded local cluster (a scheduler in this process and ``num_cpus``
      single-threaded worker processes, default every core), each worker declaring the ``CPU``
      resource; ``num_gpus`` and ``resources`` are declared on the first worker, like one Ray
      node. ``cluster_kwargs`` may be ``dashboard_address``, ``host``, ``scheduler_port``,
      ``threads_per_worker``, ``memory_limit``, ``silence_logs`` and ``worker_kwargs``.
      ``shutdown()`` stops it. Because the scheduler then shares this process, ``init`` also
      tunes it until ``shutdown()``: ``gc.freeze()`` of what exists at start-up, full
      garbage collections 10x rarer, and one-task graphs materialised on the scheduler's loop
      rather than in Dask's offload thread (see docs/performance.md for what each buys).

    ``log_to_driver``: show what remote functions and actors print or log in this terminal,
    prefixed with the function and worker, as Ray does.

    The returned client's ``dashboard_link`` is Dask's dashboard; for the embedded cluster it is
    also printed. A second ``init`` raises ``RuntimeError`` unless ``ignore_reinit_error=True``.
    """
    global _atexit_registered
    with _lock:
        if _runtime.session is not None:
            if ignore_reinit_error:
                return _runtime.session.client
            raise RuntimeError(
                "Maybe you called daskgen.init twice by accident? This error can be suppressed "
                "by passing in 'ignore_reinit_error=True' or by calling 'daskgen.shutdown()' "
                "prior to 'daskgen.init()'."
            )
        _check_count("num_cpus", num_cpus)
        _check_count("num_gpus", num_gpus)
        if resources is not None and not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict, not {type(resources).__name__}")
        address = resolve_address(address)
        kept = take_ray_keywords(cluster_kwargs, embedded=client is None and address is None)
        if client is not None:
            if not isinstance(client, Client):
                raise TypeError(f"client must be a distributed.Client, not {type(client).__name__}")
            session = _Session(client, None, owns_client=False)
        elif address is not None:
            session = _Session(_connect(address, cluster_kwargs), None, owns_client=True)
            _runtime.own_clients.add(session.client)
        else:
            session = _start_embedded(num_cpus, num_gpus, resources or {}, cluster_kwargs)
        session.log_to_driver = log_to_driver
        session.namespace_given = kept["namespace_given"]
        try:
            if session.cluster is None:
                check_cluster(session.client)  # a user's cluster: can it run daskgen at all?
            setup_client(session.client)
            env = prepare(session.client, session.shipped, kept["runtime_env"])
            session.job = Job(kept["namespace"], env)
            session.resources = _worker_resources(session.client)
            if log_to_driver:
                forward_to(session.client)
        except BaseException:
            _close(session)
            raise
        _runtime.session = session
        if not _atexit_registered:
            # Close our client before Dask's own exit hooks stop the cluster under it.
            atexit.register(shutdown)
            _atexit_registered = True
        return session.client


def _check_count(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be a non-negative int, not {value!r}")


def _start_embedded(
    num_cpus: int | None, num_gpus: int | None, resources: dict[str, float], kwargs: dict[str, Any]
) -> _Session:
    n = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    extra = dict(resources)
    if num_gpus:
        extra["GPU"] = num_gpus
    cluster = start_cluster(max(n, 1), extra, kwargs)
    try:
        client = Client(cluster)
        wait_for_workers(cluster)
        tune(client)
    except BaseException:
        untune()
        cluster.close()
        raise
    link = getattr(client, "dashboard_link", None)
    print(
        f"daskgen: started a local Dask cluster ({len(cluster.worker_spec)} workers)"
        + (f"; dashboard at {link}" if link else ""),
        file=sys.stderr,
    )
    return _Session(client, cluster, owns_client=True)


def setup_client(client: Client) -> None:
    """Give ``client`` daskgen's handlers: the scheduler plugin and the yield stream handler."""
    if client in _ready_clients:
        return
    dx.client_add_stream_handler(client, YIELD_OP, on_yield_message(client), yield_after=True)
    dx.client_add_stream_handler(client, RESULT_OP, on_result_message)
    dx.client_add_stream_handler(client, LOST_OP, on_lost_message(client))
    dx.client_add_stream_handler(client, ACTOR_DIED_OP, on_actor_died)
    dx.client_add_stream_handler(client, lost_workers.OP, lost_workers.on_worker_lost)
    dx.client_add_stream_handler(client, "cancelled-keys", on_cancelled_keys(client))
    dx.client_add_stream_handler(client, TAKEOVER_OP, handoff.on_takeover(client))
    dx.client_add_stream_handler(client, HANDED_OP, handoff.on_handed(client))
    if not client.asynchronous:
        install(client)  # daskgen's scheduler plugin (see _client.install)
    _ready_clients.add(client)


def _worker_resources(client: Client) -> list[dict[str, float]]:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return [dict(w.get("resources") or {}) for w in workers]


def worker_resources(refresh: bool = False) -> list[dict[str, float]]:
    """The resources each worker declares (re-read from the scheduler if ``refresh``)."""
    session = _runtime.session
    if session is None:
        return []
    if refresh:
        session.resources = _worker_resources(session.client)
    return [dict(r) for r in session.resources]


def _connect(address: str, kwargs: dict[str, Any]) -> Client:
    """A Dask client of the cluster at ``address``.

    One that is refused is left half-made, and Dask's ``Client.__del__`` closes it whenever it
    is collected: run inside another client's start (which holds Dask's class-wide
    ``LoopRunner`` lock), that close deadlocks the process. So it is collected here, at once.
    """
    try:
        return Client(address, **kwargs)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # the half-made client in Client.__init__
        gc.collect()
        raise


def shutdown() -> None:
    """Disconnect; stop the embedded cluster if daskgen started it. Safe to call twice."""
    with _lock:
        session, _runtime.session = _runtime.session, None
    if session is not None:
        _close(session)


def _close(session: _Session) -> None:
    close_channels(session.client)
    release(session.client, session.shipped)  # what its runtime_env put on the cluster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if session.owns_client:
            if session.client.status == "running":
                session.client.close()
            else:
                # Lost its scheduler (Dask reconnects meanwhile): closing it ends that loop,
                # which Dask logs as an error with a page of traceback. Nothing is wrong.
                with _quiet("distributed"):
                    session.client.close()
        if session.cluster is not None:
            # Values still referenced when our own cluster stops are gone by design, and its
            # connections close under it: do not let Dask log either as a problem.
            quiet = _DropSchedulerShutdownNoise()
            logging.getLogger("distributed.scheduler").addFilter(quiet)
            try:
                with _quiet("distributed", logging.ERROR):
                    session.cluster.close()
            finally:
                logging.getLogger("distributed.scheduler").removeFilter(quiet)
                untune()


@contextlib.contextmanager
def _quiet(name: str, level: int = logging.CRITICAL + 1) -> Iterator[None]:
    """Let through only records of ``level`` and above from the logger ``name`` and its
    children (Dask's config gives some of them levels of their own, so the filter goes on the
    handlers their records reach)."""

    def keep(record: logging.LogRecord) -> bool:
        ours = record.name == name or record.name.startswith(name + ".")
        return not ours or record.levelno >= level

    handlers = {*logging.getLogger(name).handlers, *logging.getLogger().handlers}
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


class _DropSchedulerShutdownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "caused the cluster to lose" not in record.getMessage()


def is_initialized() -> bool:
    """True between ``init()`` (or the first auto-initialising call) and ``shutdown()``."""
    return _runtime.session is not None


def get_client() -> Client:
    """The ``distributed.Client`` daskgen uses here (initialising on first use, as Ray does).

    Inside a task this is the worker's client, so remote calls made from tasks work.
    """
    return _runtime.client()


def _start_on_first_use() -> _Session:
    if dx.on_a_workers_loop():
        # Code a Dask worker's event loop runs (it unpickles the tasks it receives, for one):
        # never start a cluster inside a worker.
        raise RuntimeError(
            "daskgen was called from a Dask worker's event loop, where no task runs: make "
            "daskgen calls from a task's own thread."
        )
    init(ignore_reinit_error=True)
    assert _runtime.session is not None
    return _runtime.session


# What lower layers reach through _runtime (see its docstring).
_runtime.start_session = _start_on_first_use
_runtime.prepare_client = setup_client
