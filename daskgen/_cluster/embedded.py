"""The embedded cluster ``init()`` starts when no cluster is given.

A scheduler in this process and one single-threaded worker process per CPU, each declaring the
``CPU`` resource (so ``num_cpus`` means what it means in Ray). The workers are separate
``dask spec`` processes rather than ``LocalCluster``'s multiprocessing children:
multiprocessing re-imports the user's ``__main__`` in every worker, so a plain Ray-style script
(no ``if __name__ == "__main__"`` guard) would start a cluster inside each worker and crash.
Remote functions from ``__main__`` reach workers by value (cloudpickle), so workers need not
import it; the driver's ``sys.path`` is passed on so that the user's own modules import there.

The scheduler also listens on Dask's ``inproc`` transport, and the client in this process talks
to it that way: messages are handed over as objects, not serialised through a local socket.
Workers and other clients use the TCP address.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from typing import Any

from distributed import Client, Scheduler, SchedulerPlugin, SpecCluster, WorkerPlugin
from distributed.utils import format_dashboard_link

from .. import _dask_internals as dx
from . import fastlane as _fastlane

START_TIMEOUT = 120.0  # s: all workers of the embedded cluster registered (see wait_for_workers)

# Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which (as setting any of these
# does) also switches off glibc's adaptive mmap threshold: every large array a generator yields
# is then a fresh mmap whose pages fault in one by one (1.8 ms per 8 MB here, against 0.14 ms
# when freed memory is reused). These are glibc's own adapted values for large buffers (mmap
# above 32 MiB, keep up to 64 MiB free at the top of the heap), set once so that the freed
# arrays of one yield serve the next. A generator's thread allocates from its own arena, which
# glibc shrinks past what the trim threshold keeps: with 20 yields of 8 MB alive at once, the
# arrays after the 8th faulted in afresh each round (1.5-15 ms each, against 0.3 ms reused).
# The top pad keeps 256 MiB of freed memory mapped for the next round (measured: no faults
# after the first round; at most that much memory stays resident, counted as unmanaged).
WORKER_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
    "MALLOC_TRIM_THRESHOLD_": 64 * 2**20,
    "MALLOC_TOP_PAD_": 256 * 2**20,
}


# The driver's import path goes to the workers, so that the user's own modules import there. A
# nanny started earlier in this process (a LocalCluster's) leaves Dask's malloc values in
# os.environ, so the worker processes get daskgen's too.
def _worker_environ() -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        **{k: str(v) for k, v in WORKER_MALLOC.items()},
    }


_Worker = dx.spawned_worker_class(_worker_environ, WORKER_MALLOC)


class _EmbeddedCluster(SpecCluster):
    """``SpecCluster`` whose clients in this process reach the scheduler over ``inproc``."""

    @property
    def scheduler_address(self) -> str:
        return dx.scheduler_inproc_address(self.scheduler) or super().scheduler_address

    @property
    def dashboard_link(self) -> str:
        try:
            port = self.scheduler_info["services"]["dashboard"]
        except KeyError:
            return ""
        host = self.scheduler.address.split("://")[1].rsplit(":", 1)[0]
        return format_dashboard_link(host, port)


def start_cluster(n: int, extra_resources: dict[str, float], kwargs: dict[str, Any]) -> SpecCluster:
    """Start ``n`` workers; the first also declares ``extra_resources`` (GPUs, custom ones)."""
    kwargs = dict(kwargs)
    host = kwargs.pop("host", "127.0.0.1")
    scheduler_opts = {
        # TCP first (the address workers and other clients use), then inproc for this process.
        "protocol": ["tcp", "inproc"],
        "host": [host, None],
        "port": [kwargs.pop("scheduler_port", 0), None],
        "dashboard_address": kwargs.pop("dashboard_address", ":0"),
    }
    worker_opts: dict[str, Any] = {
        "nthreads": kwargs.pop("threads_per_worker", 1),
        "host": host,
        "memory_limit": dx.memory_limit(kwargs.pop("memory_limit", "auto"), n),
        "silence_logs": kwargs.get("silence_logs", 30),
        **kwargs.pop("worker_kwargs", {}),
    }
    silence = kwargs.pop("silence_logs", 30)
    if kwargs:
        raise TypeError(
            f"init() got unexpected keyword arguments {sorted(kwargs)}: the embedded cluster "
            "takes num_cpus, num_gpus, resources, dashboard_address, host, scheduler_port, "
            "threads_per_worker, memory_limit, silence_logs and worker_kwargs (for "
            "distributed.Nanny), besides Ray's own init keywords"
        )
    workers = {}
    for i in range(n):
        opts = dict(
            worker_opts,
            resources={"CPU": worker_opts["nthreads"], **(extra_resources if i == 0 else {})},
        )
        workers[i] = {
            "cls": _Worker,
            "options": {"worker_class": "distributed.Nanny", "worker_kwargs": opts},
        }
    # Given at construction, so the workers get theirs as they register (registering them once
    # the workers were up took ~0.13 s of init() here).
    scheduler_opts["plugins"] = _scheduler_plugins(n)
    return _EmbeddedCluster(
        workers=workers,
        scheduler={"cls": Scheduler, "options": scheduler_opts},
        worker=workers[n - 1],
        silence_logs=silence,
        name="daskgen",
    )


def wait_for_workers(cluster: SpecCluster, timeout: float = START_TIMEOUT) -> None:
    """Return once all of ``cluster``'s workers have registered with its scheduler and opened
    their fast lane to it (so the first tasks already use it).

    Dask's ``wait_for_workers`` asks the scheduler every 0.1 s (~50 ms of a ~0.6 s start, on
    average); the events here are set by the registrations and connections themselves. A worker
    process that exits, or workers not all started within ``timeout`` seconds, raise."""
    n = len(cluster.worker_spec)
    tuning = dx.scheduler_plugin(cluster.scheduler, FastBatchingScheduler.name)
    lane = dx.scheduler_plugin(cluster.scheduler, _fastlane.FastLaneScheduler.name)

    def started(wait: float) -> bool:
        registered = tuning.all_registered.wait(wait)
        return registered and (lane is None or lane.wait_connected(n, wait))

    deadline = time.monotonic() + timeout
    while not started(0.05):
        for name, worker in cluster.workers.items():
            code = getattr(getattr(worker, "process", None), "returncode", None)
            if code is not None:
                raise RuntimeError(
                    f"daskgen: the embedded cluster's worker process {name} exited with code "
                    f"{code} while starting; its error is in the output above"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"daskgen: the embedded cluster's workers did not all start within {timeout:g} "
                "s; check the output above for their errors, or start fewer (init(num_cpus=...))"
            )


# -------------------------------------------------------------------------- batching intervals

# Dask batches messages on each connection and sends at most once per interval, hard-coded at
# client->scheduler 10 ms, scheduler->worker 5 ms, worker->scheduler 2 ms, scheduler->client 2 ms.
# A sequential round trip waits on several of them. On the cluster daskgen starts itself (never a
# user's), they are shortened; see benchmarks/ for what it buys.
FAST_INTERVAL = 0.001

# Full garbage collections: Python runs one after every 10 collections of the middle generation
# (the third threshold). Each scans every live object, and with the scheduler in this process
# a generator's thousands of keys are tens of thousands of them: 25-55 ms per full collection,
# several per 5,000-yield round, measured. One in 100 instead; the younger generations are
# untouched, so short-lived cyclic garbage is still collected as often as before.
FULL_COLLECTION_EVERY = 100
_saved_threshold: tuple[int, ...] | None = None


class FastBatchingScheduler(SchedulerPlugin):
    """Shortens the scheduler's per-connection batching, for connections made later too, gives
    every worker that registers ``worker_plugin`` (see :class:`TuneWorker`), and sets
    ``all_registered`` once ``n_workers`` have registered (see :func:`wait_for_workers`)."""

    name = "daskgen-fast-batching"

    def __init__(
        self, worker_plugin: WorkerPlugin, n_workers: int, interval: float = FAST_INTERVAL
    ) -> None:
        self.worker_plugin = worker_plugin
        self.n_workers = n_workers
        self.interval = interval
        self.all_registered = threading.Event()

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        for stream in dx.scheduler_batched_streams(scheduler).values():
            dx.set_batching_interval(stream, self.interval)
        await dx.scheduler_register_worker_plugin(scheduler, self.worker_plugin)

    def add_worker(self, scheduler: Any, worker: str) -> None:
        dx.set_batching_interval(dx.scheduler_stream_to(scheduler, worker), self.interval)
        if len(scheduler.workers) >= self.n_workers:
            self.all_registered.set()

    def add_client(self, scheduler: Any, client: str) -> None:
        dx.set_batching_interval(dx.scheduler_stream_to(scheduler, client), self.interval)


def _scheduler_plugins(n_workers: int) -> list[SchedulerPlugin]:
    lane = _fastlane.new_lane()
    plugins: list[SchedulerPlugin] = [FastBatchingScheduler(TuneWorker(lane=lane), n_workers)]
    if lane is not None:
        plugins.append(_fastlane.FastLaneScheduler(*lane))
    return plugins


class _QuietTaskErrors(logging.Filter):
    """Dask logs each failed task's error on its worker ("Compute Failed", with daskgen's own
    frames); a daskgen task's error reaches its caller, which shows it once, as Ray does. Only
    on the embedded cluster's workers: a user's cluster keeps its workers' logs as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Compute Failed")
            and len(args) > 3
            and str(args[3]).startswith("RayTaskError(")
        )


_QUIET_TASK_ERRORS = _QuietTaskErrors()


class TuneWorker(WorkerPlugin):
    """Shortens a worker's batching towards the scheduler, lets it forget freed keys directly
    (``dx.worker_forget_directly``), freezes its start-up objects and opens its fast lane to
    the scheduler (``fastlane``) if given one."""

    name = "daskgen-tune"

    def __init__(
        self, interval: float = FAST_INTERVAL, lane: tuple[str, bytes] | None = None
    ) -> None:
        self.interval = interval
        self.lane = lane

    async def setup(self, worker: Any) -> None:
        logging.getLogger("distributed.worker").addFilter(_QUIET_TASK_ERRORS)
        if self.lane is not None:
            await _fastlane.connect(worker, *self.lane)
        dx.set_batching_interval(dx.worker_batched_stream(worker), self.interval)
        dx.worker_forget_directly(worker)
        # Full garbage collections scan every object the process holds (~20-30 ms here with
        # Dask loaded), and a generator's thousands of keys trigger them. The worker process
        # is daskgen's own, and what it holds at start-up (modules, classes) lives forever.
        gc.freeze()
        first, second, third = gc.get_threshold()
        gc.set_threshold(first, second, max(third, FULL_COLLECTION_EVERY))

    def teardown(self, worker: Any) -> None:
        _fastlane.disconnect(worker)


def tune(client: Client) -> None:
    """Apply the shorter batching interval to daskgen's own client (the scheduler and workers
    got theirs as they started: :class:`FastBatchingScheduler`).

    Also, in this process (undone by :func:`untune`): what it holds after start-up goes to the
    garbage collector's permanent generation (``gc.freeze``), so full collections no longer scan
    everything Dask and the user's program had loaded; full collections are rarer
    (:data:`FULL_COLLECTION_EVERY`); and the scheduler materialises one-task graphs on its loop
    (``dx.scheduler_materialize_small_graphs_inline``).
    """
    global _saved_threshold
    dx.set_batching_interval(dx.client_batched_comm(client), FAST_INTERVAL)
    dx.scheduler_materialize_small_graphs_inline(True)
    gc.freeze()
    _saved_threshold = gc.get_threshold()
    first, second, third = _saved_threshold
    gc.set_threshold(first, second, max(third, FULL_COLLECTION_EVERY))


def untune() -> None:
    """Give the objects frozen by :func:`tune` back to the garbage collector; restore its
    thresholds."""
    global _saved_threshold
    dx.scheduler_materialize_small_graphs_inline(False)
    if _saved_threshold is not None:  # tune() ran
        gc.unfreeze()
        gc.set_threshold(*_saved_threshold)
        _saved_threshold = None
