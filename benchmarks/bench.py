"""daskgen against raw dask.distributed and Ray 2.60, same machine, one invocation.

    pip install -e ".[bench]"            # adds ray==2.60.0 and psutil

    # embedded clusters only (the default): daskgen's embedded cluster, LocalCluster, Ray
    python benchmarks/bench.py --json benchmarks/results/latest.json \\
        --markdown benchmarks/results/latest.md
    # a real cluster only: a `dask scheduler` and two `dask worker --nanny` processes that the
    # benchmark starts on 127.0.0.1 (and kills at the end), plus Ray's local instance
    python benchmarks/bench.py --cluster real
    # ... or an already running cluster (workers should declare `--resources CPU=1`)
    python benchmarks/bench.py --cluster real --address tcp://127.0.0.1:8786
    # both, side by side in one table
    python benchmarks/bench.py --cluster both --json benchmarks/results/both.json
    # a smoke test (every workload ~10x smaller) of some groups only
    python benchmarks/bench.py --quick --cluster both --only actors,nested

Flags: ``--cluster embedded|real|both``, ``--address tcp://...`` (use that running cluster for
the real-cluster columns; implies ``--cluster real`` unless ``both`` is given), ``--only
init,core,actors,nested`` (workload groups, default all), ``--quick`` (every count ~10x
smaller, the row names keep the full sizes), ``--backends daskgen,dask,ray``, ``--repeat N``
(best of N for the timed workloads, default 3; fewer for a workload whose runs take over a
minute together), ``--step-timeout S`` (default 900, 180 with ``--quick``: a workload still
running then is reported as hung, with its process's main-thread traceback from
``faulthandler``, and the rest of its group goes on in a fresh process; an exception is
reported with its traceback and the group goes on), ``--json PATH``, ``--markdown PATH``.
The child processes' logs are kept in ``/tmp/daskgen-bench-logs-*`` when something failed.

On the 2-core machine a full ``--cluster both`` run takes roughly half an hour (measured: the
actor and nested groups 16 minutes, mostly the quicksort's Dask-based runs and Ray creating 100
actor processes; the init and core groups extrapolated from a quick run, ~15 minutes);
``--quick --cluster both`` about 7 minutes (Ray's generator peak row alone waits ~100 s: see
``_peaks``).

Every (backend, cluster kind, group) runs in a fresh subprocess, so nothing leaks between
them; with ``--cluster real`` and no ``--address``, each of them also gets a freshly started
real cluster (scheduler + 2 single-threaded worker processes under nannies, ``CPU=1`` each).
The shape is the same everywhere: 2 CPUs (daskgen's embedded cluster; ``LocalCluster`` with 2
single-threaded worker processes for raw Dask; the real cluster; ``ray.init(num_cpus=2)``).
Ray always runs on its own local instance: its one column is compared with both daskgen
columns. Ray is skipped when it is not installed.

Columns: ``dg-emb`` daskgen on its embedded cluster, ``dask-emb`` raw Dask on a
``LocalCluster``, ``dg-real`` daskgen on the real cluster (``init(address=...)``), ``dask-real``
raw Dask on the same kind of cluster (``distributed.Client(address)``), ``ray``; then the ratios
daskgen-embedded/Dask-embedded, daskgen-embedded/Ray, daskgen-real/Dask-real and
daskgen-real/Ray, where a ratio above 1 means daskgen is better (faster, or less memory, or
lower latency). After the table, each target with its measured figure and PASS/FAIL; the JSON
(``rows``, ``targets``, ``errors``, ``raw``) and the Markdown carry the same.

Rows, by group (daskgen and Ray run the same code; raw Dask what a Dask user would write):

* ``init``: ``init(num_cpus=2)`` of daskgen's embedded cluster, against
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` + ``Client`` and ``ray.init(num_cpus=2)``:
  the call alone (modules imported before), best of 3 cold subprocesses each.
* ``core``: ``tiny_tasks_2000``: 2,000 identity tasks submitted then gathered (tasks/s);
  ``sequential_round_trips_300``: submit one, ``get`` it, 300 times; ``small_yields_*_5000``:
  a generator of 5,000 ints, ``num_returns="dynamic"`` (all refs, then ``get``) and streaming
  (``get`` each ref as it comes); ``big_yields_to_driver_20x8MB``: 20 yields of 8 MB arrays,
  each fetched by the driver; ``big_yields_on_cluster_20x8MB``: each consumed by a task;
  ``yield_latency_*``: a generator yielding ``time.time()`` every 20 ms, the delay until the
  driver holds the value (100 yields); ``actor_calls_sequential_200``: one actor, ``get`` each
  call; ``*_peak_10x50MB``: peak traced memory in a task yielding (or returning a list of) ten
  50 MB arrays, its consumer keeping up. Raw Dask has no generators: its generator rows use a
  task returning a list plus one ``getitem`` task per item ("dynamic"), and ``scatter`` into a
  ``distributed.Queue`` from inside the task ("streaming"), on both cluster kinds.
* ``actors``: one actor, N calls submitted then gathered
  (``get([a.inc.remote() for _ in range(N)])``) for N = 250, 500, 1000, 2000 and 5000
  (calls/s); ``actor_per_call_cost_5000_vs_250``: per-call time at 5,000 over per-call time at
  250 (1 = flat; no ratio columns); ``actor_calls_sequential_300``: ``get`` each of 300 calls;
  ``actors_100_create``: creating 100 actors until each answered one call (s);
  ``actors_100x100_gathered``: then 100 calls to each, submitted round-robin, gathered. The
  raw-Dask column of the sequential and 2,000-call rows is Dask's own actors
  (``client.submit(Counter, actor=True).result()``, ``actor.inc()`` ``ActorFuture.result()``).
* ``nested``: ``nested_quicksort_1M``: a recursive quicksort task on a list of 1,000,000 random
  ints (a list of up to 200,000 is ``sorted()`` in the task; a longer one is partitioned around
  its middle element and the two halves go to two child tasks, whose results it ``get``\\ s),
  driver wall time (s); ``args_by_value_200x10MB``: 200
  tasks each given the same 10 MB array by value (``f.remote(array)``, no ``put``), submit to
  all done (s); ``nested_500_tiny_from_task``: one task submits 500 tiny tasks and gathers them,
  timed inside the outer task (s). Raw Dask does the same through ``worker_client()`` and
  ``client.submit(f, array)``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import faulthandler
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUPS = ("init", "core", "actors", "nested")
BACKENDS = ("daskgen", "dask", "ray")
INIT_RUNS = 3  # cold subprocesses per backend for the init row

# Full sizes; --quick scales every count by QUICK_SCALE (the value sizes stay the same, except
# the peak rows' arrays).
N_TINY = 2000
N_SEQ = 300
N_SMALL_YIELDS = 5000
N_BIG = 20
BIG_FLOATS = 1_000_000  # 8 MB of float64
N_PACED = 100
PACE_S = 0.02
N_HUGE = 10
HUGE_BYTES = 50_000_000
N_ACTOR_CALLS = 200
ACTOR_BATCHES = (250, 500, 1000, 2000, 5000)
N_ACTOR_SEQ = 300
N_ACTORS = 100
N_CALLS_PER_ACTOR = 100
N_QSORT = 1_000_000
QSORT_THRESHOLD = 200_000
N_BY_VALUE = 200
BY_VALUE_FLOATS = 1_250_000  # 10 MB of float64
N_FAN_OUT = 500
QUICK_SCALE = 0.1

# name, unit, better ("lower"/"higher"), group, whether ratio columns make sense
METRICS = [
    ("init", "s", "lower", "init", True),
    ("tiny_tasks_2000", "tasks/s", "higher", "core", True),
    ("sequential_round_trips_300", "round trips/s", "higher", "core", True),
    ("small_yields_dynamic_5000", "yields/s", "higher", "core", True),
    ("small_yields_streaming_5000", "yields/s", "higher", "core", True),
    ("big_yields_to_driver_20x8MB", "MB/s", "higher", "core", True),
    ("big_yields_on_cluster_20x8MB", "MB/s", "higher", "core", True),
    ("yield_latency_median", "ms", "lower", "core", True),
    ("yield_latency_p95", "ms", "lower", "core", True),
    ("actor_calls_sequential_200", "calls/s", "higher", "core", True),
    ("generator_peak_10x50MB", "MB", "lower", "core", True),
    ("list_peak_10x50MB", "MB", "lower", "core", True),
    *[(f"actor_calls_gathered_{n}", "calls/s", "higher", "actors", True) for n in ACTOR_BATCHES],
    ("actor_per_call_cost_5000_vs_250", "x", "lower", "actors", False),
    ("actor_calls_sequential_300", "calls/s", "higher", "actors", True),
    ("actors_100_create", "s", "lower", "actors", True),
    ("actors_100x100_gathered", "calls/s", "higher", "actors", True),
    ("nested_quicksort_1M", "s", "lower", "nested", True),
    ("args_by_value_200x10MB", "s", "lower", "nested", True),
    ("nested_500_tiny_from_task", "s", "lower", "nested", True),
]
BETTER = {m[0]: m[2] for m in METRICS}

# The table's value columns: (label, backend, cluster kind). Ray has one local instance.
COLUMNS = [
    ("dg-emb", "daskgen", "embedded"),
    ("dask-emb", "dask", "embedded"),
    ("dg-real", "daskgen", "real"),
    ("dask-real", "dask", "real"),
    ("ray", "ray", "local"),
]
# ratio columns: (label, ours, theirs)
RATIOS = [
    ("emb/dask", "dg-emb", "dask-emb"),
    ("emb/ray", "dg-emb", "ray"),
    ("real/dask", "dg-real", "dask-real"),
    ("real/ray", "dg-real", "ray"),
]


@dataclass(frozen=True)
class Target:
    """``speedup``: how many times better daskgen is than ``theirs`` (a ratio column's value);
    ``time``: daskgen's time over theirs; ``value``: daskgen's own figure."""

    label: str
    metric: str
    ours: str  # a COLUMNS label
    theirs: str | None
    kind: str  # "speedup", "time" or "value"
    op: str  # ">=" or "<="
    threshold: float


# fmt: off
TARGETS = [
    Target("real: sequential round trips vs raw Dask", "sequential_round_trips_300", "dg-real",
           "dask-real", "speedup", ">=", 3.0),
    Target("real: yield latency median (ms)", "yield_latency_median", "dg-real", None, "value",
           "<=", 1.0),
    Target("real: tiny tasks vs raw Dask", "tiny_tasks_2000", "dg-real", "dask-real", "speedup",
           ">=", 1.2),
    Target("real: 8 MB yields to driver vs Ray", "big_yields_to_driver_20x8MB", "dg-real", "ray",
           "speedup", ">=", 1.0),
    Target("real: streaming small yields vs Ray", "small_yields_streaming_5000", "dg-real", "ray",
           "speedup", ">=", 1.5),
    Target("embedded: tiny tasks vs Ray", "tiny_tasks_2000", "dg-emb", "ray", "speedup", ">=",
           1.0),
    Target("embedded: sequential round trips vs Ray", "sequential_round_trips_300", "dg-emb",
           "ray", "speedup", ">=", 0.8),
    Target("embedded: init time / LocalCluster start", "init", "dg-emb", "dask-emb", "time", "<=",
           1.2),
    Target("embedded: actors, 2,000 calls gathered vs Ray", "actor_calls_gathered_2000", "dg-emb",
           "ray", "speedup", ">=", 1.0),
    Target("real: actors, 2,000 calls gathered vs Ray", "actor_calls_gathered_2000", "dg-real",
           "ray", "speedup", ">=", 1.0),
    Target("embedded: actors, sequential vs Ray", "actor_calls_sequential_300", "dg-emb", "ray",
           "speedup", ">=", 1.0),
    Target("real: actors, sequential vs Dask's actors", "actor_calls_sequential_300", "dg-real",
           "dask-real", "speedup", ">=", 2.0),
    Target("embedded: actors, per-call cost 5000 vs 250", "actor_per_call_cost_5000_vs_250",
           "dg-emb", None, "value", "<=", 1.3),
    Target("real: actors, per-call cost 5000 vs 250", "actor_per_call_cost_5000_vs_250",
           "dg-real", None, "value", "<=", 1.3),
    Target("embedded: 100 actors x 100 calls vs Ray", "actors_100x100_gathered", "dg-emb", "ray",
           "speedup", ">=", 0.8),
    Target("real: 100 actors x 100 calls vs Ray", "actors_100x100_gathered", "dg-real", "ray",
           "speedup", ">=", 0.8),
    Target("embedded: quicksort time / Ray's", "nested_quicksort_1M", "dg-emb", "ray", "time",
           "<=", 1.5),
    Target("real: quicksort time / Ray's", "nested_quicksort_1M", "dg-real", "ray", "time", "<=",
           1.5),
    Target("embedded: 200 x 10 MB by value vs Ray", "args_by_value_200x10MB", "dg-emb", "ray",
           "speedup", ">=", 1.0),
    Target("real: 200 x 10 MB by value vs Ray", "args_by_value_200x10MB", "dg-real", "ray",
           "speedup", ">=", 1.0),
    Target("embedded: 500 tiny from one task vs Ray", "nested_500_tiny_from_task", "dg-emb", "ray",
           "speedup", ">=", 1.0),
    Target("real: 500 tiny from one task vs Ray", "nested_500_tiny_from_task", "dg-real", "ray",
           "speedup", ">=", 1.0),
]
# fmt: on


@dataclass(frozen=True)
class Sizes:
    scale: float = 1.0

    def n(self, full: int) -> int:
        return max(1, round(full * self.scale))

    @property
    def huge_bytes(self) -> int:
        return self.n(HUGE_BYTES)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


REPEAT_BUDGET_S = 60.0  # no further repeats of a workload once its runs took this long


def _best(fn: Callable[[], Any], repeat: int) -> float:
    """Best of ``repeat`` runs, but no more runs once the next would likely take the workload
    past ``REPEAT_BUDGET_S`` (a slow one, e.g. raw Dask's quicksort, runs once or twice)."""
    times = [_timed(fn)]
    while len(times) < repeat and sum(times) + times[-1] <= REPEAT_BUDGET_S:
        times.append(_timed(fn))
    return min(times)


Steps = list[tuple[str, Callable[[], dict[str, float] | None]]]

# ------------------------------------------------------------------ daskgen and Ray (same code)


def ray_like_core(api: Any, sz: Sizes, repeat: int) -> Steps:
    n_tiny, n_seq, n_small = sz.n(N_TINY), sz.n(N_SEQ), sz.n(N_SMALL_YIELDS)
    n_big, n_paced, n_actor = sz.n(N_BIG), sz.n(N_PACED), sz.n(N_ACTOR_CALLS)

    @api.remote
    def tiny(x):
        return x

    @api.remote
    def small_gen(n):
        for i in range(n):  # noqa: UP028 (`yield from range(n)` fails on Ray 2.60 streaming)
            yield i

    @api.remote
    def big_gen(n, size):
        import numpy as np

        for i in range(n):
            yield np.full(size, i, dtype=np.float64)

    @api.remote
    def total(a):
        return float(a[0])

    @api.remote
    def paced(n, pace):
        import time

        for _ in range(n):
            time.sleep(pace)
            yield time.time()

    def warmup():
        api.get([tiny.remote(i) for i in range(200)])  # warm up workers and code paths
        for r in small_gen.remote(10):
            api.get(r)

    def tiny_tasks():
        def batch():
            assert api.get([tiny.remote(i) for i in range(n_tiny)])[-1] == n_tiny - 1

        return {"tiny_tasks_2000": n_tiny / _best(batch, repeat)}

    def sequential():
        def run():
            for i in range(n_seq):
                api.get(tiny.remote(i))

        return {"sequential_round_trips_300": n_seq / _best(run, repeat)}

    def dynamic():
        def run():
            refs = list(api.get(small_gen.options(num_returns="dynamic").remote(n_small)))
            assert api.get(refs)[-1] == n_small - 1

        return {"small_yields_dynamic_5000": n_small / _best(run, repeat)}

    def streaming():
        def run():
            last = None
            for ref in small_gen.remote(n_small):
                last = api.get(ref)
            assert last == n_small - 1

        return {"small_yields_streaming_5000": n_small / _best(run, repeat)}

    mb = n_big * BIG_FLOATS * 8 / 1e6

    def to_driver():
        def run():
            for i, ref in enumerate(big_gen.remote(n_big, BIG_FLOATS)):
                assert api.get(ref)[0] == i

        return {"big_yields_to_driver_20x8MB": mb / _best(run, repeat)}

    def on_cluster():
        def run():
            refs = [total.remote(ref) for ref in big_gen.remote(n_big, BIG_FLOATS)]
            assert api.get(refs) == [float(i) for i in range(n_big)]

        return {"big_yields_on_cluster_20x8MB": mb / _best(run, repeat)}

    def latency():
        latencies = []
        for ref in paced.remote(n_paced, PACE_S):
            received = time.time()
            latencies.append(received - api.get(ref))
        return {
            "yield_latency_median": statistics.median(latencies) * 1e3,
            "yield_latency_p95": statistics.quantiles(latencies, n=20)[18] * 1e3,
        }

    @api.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    def actor_calls():
        counter = Counter.remote()
        api.get(counter.incr.remote())

        def run():
            for _ in range(n_actor):
                api.get(counter.incr.remote())

        return {"actor_calls_sequential_200": n_actor / _best(run, repeat)}

    def peaks():
        gen_peak, list_peak = _peaks(api, N_HUGE, sz.huge_bytes)
        return {"generator_peak_10x50MB": gen_peak, "list_peak_10x50MB": list_peak}

    return [
        ("warmup", warmup),
        ("tiny_tasks", tiny_tasks),
        ("sequential", sequential),
        ("dynamic", dynamic),
        ("streaming", streaming),
        ("to_driver", to_driver),
        ("on_cluster", on_cluster),
        ("latency", latency),
        ("actor_calls", actor_calls),
        ("peaks", peaks),
    ]


def _peaks(api: Any, n_huge: int, huge_bytes: int) -> tuple[float, float]:
    """Peak traced memory in the producing task: a generator vs the same function as a list.

    What is measured is what the task itself holds, not what the cluster stores: the consumer
    takes and drops each value, and the generator waits (bounded) until the value it yielded has
    been freed before making the next one. So the peak shows whether the generator machinery
    keeps or copies past values (about 1 array if not), while the list version holds all of them.
    Ray's object store is outside tracemalloc; daskgen's is the worker's heap, hence the wait.
    """

    @api.remote
    def huge_gen(n, size):
        import time
        import tracemalloc

        import numpy as np

        tracemalloc.start()
        floor = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for i in range(n):
            array = np.full(size, i, dtype=np.uint8)
            yield array
            del array
            deadline = time.monotonic() + 10
            while tracemalloc.get_traced_memory()[0] - floor > size // 2:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001)
        yield tracemalloc.get_traced_memory()[1] - floor
        tracemalloc.stop()

    @api.remote
    def huge_list(n, size):
        import tracemalloc

        import numpy as np

        tracemalloc.start()
        floor = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        values = [np.full(size, i, dtype=np.uint8) for i in range(n)]
        peak = tracemalloc.get_traced_memory()[1] - floor
        tracemalloc.stop()
        return values, peak

    peak = 0.0
    gen = huge_gen.remote(n_huge, huge_bytes)
    while True:
        try:
            ref = next(gen)
        except StopIteration:
            break
        value = api.get(ref)
        if isinstance(value, int):
            peak = value
        del value, ref
    _, list_peak = api.get(huge_list.remote(n_huge, huge_bytes))
    return peak / 1e6, list_peak / 1e6


def ray_like_actors(api: Any, sz: Sizes, repeat: int) -> Steps:
    n_seq, n_actors, n_calls = sz.n(N_ACTOR_SEQ), sz.n(N_ACTORS), sz.n(N_CALLS_PER_ACTOR)

    @api.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    state: dict[str, Any] = {}
    batch_times: dict[int, float] = {}

    def warmup():
        a = state["actor"] = Counter.remote()
        api.get([a.inc.remote() for _ in range(50)])
        for _ in range(20):
            api.get(a.inc.remote())

    def gathered(full: int) -> Callable[[], dict[str, float]]:
        n = sz.n(full)

        def step():
            a = state["actor"]

            def run():
                values = api.get([a.inc.remote() for _ in range(n)])
                assert values[-1] - values[0] == n - 1

            batch_times[full] = t = _best(run, repeat)
            return {f"actor_calls_gathered_{full}": n / t}

        return step

    def per_call_cost():
        lo, hi = ACTOR_BATCHES[0], ACTOR_BATCHES[-1]
        if lo not in batch_times or hi not in batch_times:
            return None
        ratio = (batch_times[hi] / sz.n(hi)) / (batch_times[lo] / sz.n(lo))
        return {"actor_per_call_cost_5000_vs_250": ratio}

    def sequential():
        a = state["actor"]

        def run():
            for _ in range(n_seq):
                api.get(a.inc.remote())

        return {"actor_calls_sequential_300": n_seq / _best(run, repeat)}

    def many():
        actors: list[Any] = []

        def create():
            actors.extend(Counter.remote() for _ in range(n_actors))
            assert api.get([a.inc.remote() for a in actors]) == [1] * n_actors

        created = _timed(create)

        def run():
            refs = [a.inc.remote() for _ in range(n_calls) for a in actors]
            assert len(api.get(refs)) == n_calls * n_actors

        rate = n_calls * n_actors / _best(run, repeat)
        del actors[:]
        return {"actors_100_create": created, "actors_100x100_gathered": rate}

    return [
        ("warmup", warmup),
        *[(f"gathered_{full}", gathered(full)) for full in ACTOR_BATCHES],
        ("per_call_cost", per_call_cost),
        ("sequential", sequential),
        ("many", many),
    ]


def _qsort_data(n: int) -> tuple[list[int], list[int]]:
    import random

    rng = random.Random(0)
    data = [rng.randrange(1_000_000_000) for _ in range(n)]
    return data, sorted(data)


def ray_like_nested(api: Any, sz: Sizes, repeat: int) -> Steps:
    import numpy as np

    threshold, n_by_value, n_fan = sz.n(QSORT_THRESHOLD), sz.n(N_BY_VALUE), sz.n(N_FAN_OUT)

    @api.remote
    def tiny(x):
        return x

    @api.remote
    def qsort(xs, threshold):
        if len(xs) <= threshold:
            return sorted(xs)
        pivot = xs[len(xs) // 2]
        less = [x for x in xs if x < pivot]
        equal = [x for x in xs if x == pivot]
        greater = [x for x in xs if x > pivot]
        left, right = api.get([qsort.remote(less, threshold), qsort.remote(greater, threshold)])
        return left + equal + right

    @api.remote
    def first(a):
        return float(a[0])

    @api.remote
    def fan_out(n):
        import time

        start = time.perf_counter()
        values = api.get([tiny.remote(i) for i in range(n)])
        elapsed = time.perf_counter() - start
        assert values[-1] == n - 1
        return elapsed

    def warmup():
        api.get([tiny.remote(i) for i in range(200)])
        api.get(qsort.remote(list(range(100, 0, -1)), 40))
        api.get(fan_out.remote(10))

    def quicksort():
        data, expected = _qsort_data(sz.n(N_QSORT))
        out: list[Any] = []

        def run():
            out[:] = [api.get(qsort.remote(data, threshold))]

        best = _best(run, repeat)
        assert out[0] == expected
        return {"nested_quicksort_1M": best}

    def by_value():
        array = np.arange(BY_VALUE_FLOATS, dtype=np.float64)

        def run():
            assert api.get([first.remote(array) for _ in range(n_by_value)]) == [0.0] * n_by_value

        return {"args_by_value_200x10MB": _best(run, repeat)}

    def fan():
        best = min(api.get(fan_out.remote(n_fan)) for _ in range(repeat))
        return {"nested_500_tiny_from_task": best}

    return [("warmup", warmup), ("quicksort", quicksort), ("by_value", by_value), ("fan_out", fan)]


RAY_LIKE = {"core": ray_like_core, "actors": ray_like_actors, "nested": ray_like_nested}

# --------------------------------------------------------------------------------------- raw Dask


def dask_core(client: Any, sz: Sizes, repeat: int) -> Steps:
    import operator

    from distributed import Queue, get_client

    n_tiny, n_seq, n_small = sz.n(N_TINY), sz.n(N_SEQ), sz.n(N_SMALL_YIELDS)
    n_big, n_paced = sz.n(N_BIG), sz.n(N_PACED)

    def tiny(x):
        return x

    def warmup():
        client.gather([client.submit(tiny, i, pure=False) for i in range(200)])

    def tiny_tasks():
        def batch():
            futures = [client.submit(tiny, i, pure=False) for i in range(n_tiny)]
            assert client.gather(futures)[-1] == n_tiny - 1

        return {"tiny_tasks_2000": n_tiny / _best(batch, repeat)}

    def sequential():
        def run():
            for i in range(n_seq):
                client.submit(tiny, i, pure=False).result()

        return {"sequential_round_trips_300": n_seq / _best(run, repeat)}

    def as_list(n):
        return list(range(n))

    def dynamic():
        def run():
            whole = client.submit(as_list, n_small, pure=False)
            parts = [client.submit(operator.getitem, whole, i, pure=False) for i in range(n_small)]
            assert client.gather(parts)[-1] == n_small - 1

        return {"small_yields_dynamic_5000": n_small / _best(run, repeat)}

    def scatter_into_queue(name, n, size):
        import numpy as np

        c = get_client()
        q = Queue(name)
        for i in range(n):
            value = np.full(size, i, dtype=np.float64) if size else i
            q.put(c.scatter(value, hash=False))
        q.put(None)

    def streaming_values(n, size):
        name = f"q-{time.monotonic_ns()}"
        q = Queue(name)
        producer = client.submit(scatter_into_queue, name, n, size, pure=False)
        while (fut := q.get()) is not None:
            yield fut
        producer.result()

    def streaming():
        def run():
            last = None
            for fut in streaming_values(n_small, 0):
                last = fut.result()
            assert last == n_small - 1

        return {"small_yields_streaming_5000": n_small / _best(run, repeat)}

    mb = n_big * BIG_FLOATS * 8 / 1e6

    def to_driver():
        def run():
            for i, fut in enumerate(streaming_values(n_big, BIG_FLOATS)):
                assert fut.result()[0] == i

        return {"big_yields_to_driver_20x8MB": mb / _best(run, repeat)}

    def first(a):
        return float(a[0])

    def on_cluster():
        def run():
            futs = [
                client.submit(first, f, pure=False) for f in streaming_values(n_big, BIG_FLOATS)
            ]
            assert client.gather(futs) == [float(i) for i in range(n_big)]

        return {"big_yields_on_cluster_20x8MB": mb / _best(run, repeat)}

    def paced_into_queue(name, n, pace):
        import time

        c = get_client()
        q = Queue(name)
        for _ in range(n):
            time.sleep(pace)
            q.put(c.scatter(time.time(), hash=False))
        q.put(None)

    def latency():
        name = f"paced-{time.monotonic_ns()}"
        q = Queue(name)
        producer = client.submit(paced_into_queue, name, n_paced, PACE_S, pure=False)
        latencies = []
        while (fut := q.get()) is not None:
            received = time.time()
            latencies.append(received - fut.result())
        producer.result()
        return {
            "yield_latency_median": statistics.median(latencies) * 1e3,
            "yield_latency_p95": statistics.quantiles(latencies, n=20)[18] * 1e3,
        }

    def huge_list(n, size):
        import tracemalloc

        import numpy as np

        tracemalloc.start()
        tracemalloc.reset_peak()
        values = [np.full(size, i, dtype=np.uint8) for i in range(n)]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return values, peak

    def peaks():
        _, peak = client.submit(huge_list, N_HUGE, sz.huge_bytes, pure=False).result()
        return {"list_peak_10x50MB": peak / 1e6}

    return [
        ("warmup", warmup),
        ("tiny_tasks", tiny_tasks),
        ("sequential", sequential),
        ("dynamic", dynamic),
        ("streaming", streaming),
        ("to_driver", to_driver),
        ("on_cluster", on_cluster),
        ("latency", latency),
        ("peaks", peaks),
    ]


def dask_actors(client: Any, sz: Sizes, repeat: int) -> Steps:
    """Dask's own actors: the sequential and 2,000-call rows."""
    n_seq, n_batch = sz.n(N_ACTOR_SEQ), sz.n(2000)

    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    state: dict[str, Any] = {}

    def warmup():
        a = state["actor"] = client.submit(Counter, actor=True).result()
        for future in [a.inc() for _ in range(50)]:
            future.result()
        for _ in range(20):
            a.inc().result()

    def gathered():
        a = state["actor"]

        def run():
            futures = [a.inc() for _ in range(n_batch)]
            values = [f.result() for f in futures]
            # Dask runs a client's actor calls in arrival order, not submission order
            assert len(set(values)) == n_batch and max(values) - min(values) == n_batch - 1

        return {"actor_calls_gathered_2000": n_batch / _best(run, repeat)}

    def sequential():
        a = state["actor"]

        def run():
            for _ in range(n_seq):
                a.inc().result()

        return {"actor_calls_sequential_300": n_seq / _best(run, repeat)}

    return [("warmup", warmup), ("gathered_2000", gathered), ("sequential", sequential)]


def dask_nested(client: Any, sz: Sizes, repeat: int) -> Steps:
    import numpy as np

    threshold, n_by_value, n_fan = sz.n(QSORT_THRESHOLD), sz.n(N_BY_VALUE), sz.n(N_FAN_OUT)

    def tiny(x):
        return x

    def qsort(xs, threshold):
        from distributed import worker_client

        if len(xs) <= threshold:
            return sorted(xs)
        pivot = xs[len(xs) // 2]
        less = [x for x in xs if x < pivot]
        equal = [x for x in xs if x == pivot]
        greater = [x for x in xs if x > pivot]
        with worker_client() as c:
            halves = [c.submit(qsort, part, threshold, pure=False) for part in (less, greater)]
            left, right = c.gather(halves)
        return left + equal + right

    def first(a):
        return float(a[0])

    def fan_out(n):
        import time

        from distributed import worker_client

        start = time.perf_counter()
        with worker_client() as c:
            values = c.gather([c.submit(tiny, i, pure=False) for i in range(n)])
        elapsed = time.perf_counter() - start
        assert values[-1] == n - 1
        return elapsed

    def warmup():
        client.gather([client.submit(tiny, i, pure=False) for i in range(200)])
        client.submit(qsort, list(range(100, 0, -1)), 40, pure=False).result()
        client.submit(fan_out, 10, pure=False).result()

    def quicksort():
        data, expected = _qsort_data(sz.n(N_QSORT))
        out: list[Any] = []

        def run():
            out[:] = [client.submit(qsort, data, threshold, pure=False).result()]

        best = _best(run, repeat)
        assert out[0] == expected
        return {"nested_quicksort_1M": best}

    def by_value():
        array = np.arange(BY_VALUE_FLOATS, dtype=np.float64)

        def run():
            futures = [client.submit(first, array, pure=False) for _ in range(n_by_value)]
            assert client.gather(futures) == [0.0] * n_by_value

        return {"args_by_value_200x10MB": _best(run, repeat)}

    def fan():
        runs = [client.submit(fan_out, n_fan, pure=False).result() for _ in range(repeat)]
        return {"nested_500_tiny_from_task": min(runs)}

    return [("warmup", warmup), ("quicksort", quicksort), ("by_value", by_value), ("fan_out", fan)]


DASK = {"core": dask_core, "actors": dask_actors, "nested": dask_nested}

# ------------------------------------------------------------------------- child processes


def _start_backend(backend: str, kind: str, address: str | None) -> tuple[Any, Callable]:
    if backend == "dask":
        from distributed import Client, LocalCluster

        if kind == "real":
            client = Client(address, timeout=60)
            return client, client.close
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
        client = Client(cluster)

        def stop() -> None:
            client.close()
            cluster.close()

        return client, stop
    api = importlib.import_module(backend)
    if kind == "real":
        api.init(address=address)
    else:
        api.init(num_cpus=2)
    return api, api.shutdown


def _child(args: argparse.Namespace) -> None:
    """Run one group's steps on one backend, writing what is done to ``args.out`` after each
    step (so a hung step, cut short by faulthandler, leaves the others' figures)."""
    state: dict[str, Any] = {"metrics": {}, "done": [], "errors": {}, "seconds": {}}

    def save(running: str | None) -> None:
        state["running"] = running
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, args.out)

    def guarded(name: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        save(name)
        faulthandler.dump_traceback_later(args.step_timeout, exit=True)
        start = time.perf_counter()
        try:
            return True, fn()
        except Exception:
            state["errors"][name] = traceback.format_exc()
            return False, None
        finally:
            faulthandler.cancel_dump_traceback_later()
            state["seconds"][name] = round(time.perf_counter() - start, 3)
            state["done"].append(name)
            save(None)

    skip = set(filter(None, (args.skip or "").split(",")))
    sizes = Sizes(QUICK_SCALE if args.quick else 1.0)
    ok, started = guarded("start", lambda: _start_backend(args.child, args.kind, args.address))
    if not ok:
        sys.exit(3)
    handle, stop = started
    build = (DASK if args.child == "dask" else RAY_LIKE)[args.group]
    for name, fn in build(handle, sizes, args.repeat):
        if name not in skip:
            ok, metrics = guarded(name, fn)
            if ok and metrics:
                state["metrics"].update(metrics)
    guarded("shutdown", stop)


def _child_init(backend: str, out: str) -> None:
    """One cold start of an embedded cluster (modules imported first), then its stop."""
    if backend == "dask":
        from distributed import Client, LocalCluster

        holder: dict[str, Any] = {}

        def start() -> None:
            holder["cluster"] = LocalCluster(
                n_workers=2, threads_per_worker=1, dashboard_address=":0"
            )
            holder["client"] = Client(holder["cluster"])

        elapsed = _timed(start)
        holder["client"].close()
        holder["cluster"].close()
    else:
        api = importlib.import_module(backend)
        elapsed = _timed(lambda: api.init(num_cpus=2))
        api.shutdown()
    with open(out, "w") as f:
        json.dump({"init": elapsed}, f)


def _compile_daskgen() -> None:
    """Compile daskgen's modules to bytecode, as installing it with pip does.

    Dask and Ray are installed packages, compiled when pip installed them. daskgen here is
    usually an editable install, whose bytecode Python writes at the first import, unless
    ``PYTHONDONTWRITEBYTECODE`` is set (it is, on the machine the recorded runs come from): then
    every embedded worker compiled daskgen's modules again as it started, ~0.1 s of each
    ``init()`` (measured: ``init()`` 1.3-1.4x a ``LocalCluster`` start uncompiled, 1.06-1.13x
    compiled)."""
    import importlib.util

    spec = importlib.util.find_spec("daskgen")
    if spec is not None and spec.origin is not None:
        compileall.compile_dir(os.path.dirname(spec.origin), quiet=1)


def _child_env() -> dict[str, str]:
    env = dict(os.environ, RAY_DEDUP_LOGS="0")
    env.pop("DASKGEN_ADDRESS", None)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group this benchmark started for ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _spawn(cmd: list[str], log: Path, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own session (so its whole group can be killed), stdout and stderr to
    ``log``; return its exit code (None when it was killed at ``timeout``) and the log's tail."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(),
            start_new_session=True,
        )
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _kill_group(proc)
    return rc, log.read_text(errors="replace")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _main_thread(log: str) -> str:
    """From faulthandler's dump of every thread (the main thread's is the last), the main
    thread's stack, innermost call first."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(("Thread 0x", "Current thread"))]
    if not starts:
        return _tail(log, 80)
    block = lines[starts[-1] :]
    end = next((i for i, line in enumerate(block) if not line.strip()), len(block))
    return "\n".join(block[:end])


# ---------------------------------------------------------------------------- a real cluster


class RealCluster:
    """A ``dask scheduler`` and ``n_workers`` ``dask worker --nthreads 1 --nworkers 1 --nanny
    --resources CPU=1`` on 127.0.0.1, each in its own session; :meth:`close` kills exactly those
    process groups (the nannies' worker children are in their nanny's group). After
    ``tests/realcluster.py``, reduced to what the benchmark needs."""

    def __init__(self, n_workers: int = 2) -> None:
        self.n_workers = n_workers
        self.directory = Path(tempfile.mkdtemp(prefix="daskgen-bench-cluster-"))
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        dask = str(Path(sys.executable).with_name("dask"))
        env = _child_env()
        env.pop("PYTHONPATH", None)  # functions reach the workers by value, as on a cluster
        with open(self.directory / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                [dask, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 90) -> str:
        scheduler_file = self.directory / "scheduler.json"
        scheduler = self._spawn(
            "scheduler",
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0"]
            + ["--scheduler-file", str(scheduler_file)],
        )
        deadline = time.monotonic() + timeout
        while not self.address:
            if scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited early:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start:\n{self.logs()}")
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
                self.address = json.loads(scheduler_file.read_text())["address"]
            time.sleep(0.05)
        for i in range(self.n_workers):
            local = self.directory / f"worker-{i}"
            local.mkdir()
            args = ["worker", self.address, "--nthreads", "1", "--nworkers", "1", "--nanny"]
            args += ["--resources", "CPU=1", "--host", "127.0.0.1"]
            self._spawn(f"worker-{i}", [*args, "--local-directory", str(local)])
        self._wait_for_workers(max(1.0, deadline - time.monotonic()))
        return self.address

    def _wait_for_workers(self, timeout: float) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            try:
                client.wait_for_workers(self.n_workers, timeout=timeout)
            except TimeoutError as exc:
                raise RuntimeError(f"workers did not register:\n{self.logs()}") from exc
            # A nanny's worker registers before the nanny itself has finished starting.
            deadline = time.monotonic() + timeout
            while client.run_on_scheduler(
                lambda dask_scheduler: bool(getattr(dask_scheduler, "_starting_nannies", ()))
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nannies did not finish starting:\n{self.logs()}")
                time.sleep(0.05)

    def logs(self, tail: int = 30) -> str:
        parts = []
        for log in sorted(self.directory.glob("*.log")):
            parts.append(f"--- {log.name} ---")
            parts.append(_tail(log.read_text(errors="replace"), tail))
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _kill_group(proc)  # the whole group: a nanny's worker child too
        self.procs.clear()
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def real_cluster(address: str | None) -> Iterator[str]:
    """The given cluster's address, or a fresh one's, killed on exit whatever happened."""
    if address:
        yield address
        return
    cluster = RealCluster()
    try:
        yield cluster.start()
    finally:
        cluster.close()


# -------------------------------------------------------------------------------------- driver


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, dict[str, float]] = {}  # by COLUMNS label
        self.errors: list[dict[str, str]] = []
        self.seconds: dict[str, dict[str, float]] = {}  # per child: per step
        self.logdir = Path(tempfile.mkdtemp(prefix="daskgen-bench-logs-"))

    def _label(self, backend: str, kind: str) -> str:
        return next(c[0] for c in COLUMNS if c[1] == backend and c[2] == kind)

    def _error(self, where: str, step: str, summary: str, detail: str = "") -> None:
        """Record a failure: ``summary`` one line, ``detail`` the traceback(s)."""
        self.errors.append({"where": where, "step": step, "summary": summary, "error": detail})
        print(f"  !! {where} {step}: {summary}\n{_tail(detail, 30)}", file=sys.stderr)

    def run_init(self, backends: list[str]) -> None:
        for backend in backends:
            label = self._label(backend, "local" if backend == "ray" else "embedded")
            times = []
            for i in range(INIT_RUNS):
                out = self.logdir / f"init-{backend}-{i}.json"
                cmd = [sys.executable, __file__, "--child-init", backend, "--out", str(out)]
                rc, log = _spawn(cmd, self.logdir / f"init-{backend}-{i}.log", 300)
                if rc != 0 or not out.exists():
                    self._error(label, "init", f"exited with rc {rc}", _tail(log))
                    continue
                times.append(json.loads(out.read_text())["init"])
            if times:
                self.results.setdefault(label, {})["init"] = min(times)
                print(f"  {label} init: best of {len(times)} {min(times):.3f} s", file=sys.stderr)

    def run_group(self, backend: str, kind: str, group: str) -> None:
        """One group on one backend, in a fresh process (and with a fresh real cluster unless
        --address); a step that hangs or kills its process is reported, and the steps after it
        run in another fresh process."""
        label = self._label(backend, kind)
        where = f"{label}/{group}"
        skip: list[str] = []
        for attempt in range(10):
            out = self.logdir / f"{label}-{group}-{attempt}.json"
            cmd = [sys.executable, __file__, "--child", backend, "--kind", kind, "--group", group]
            cmd += ["--repeat", str(self.args.repeat), "--out", str(out)]
            cmd += ["--step-timeout", str(self.args.step_timeout)]
            if self.args.quick:
                cmd.append("--quick")
            if skip:
                cmd += ["--skip", ",".join(skip)]
            start = time.perf_counter()
            try:
                with contextlib.ExitStack() as stack:
                    if kind == "real":
                        address = stack.enter_context(real_cluster(self.args.address))
                        cmd += ["--address", address]
                    rc, log = _spawn(cmd, self.logdir / f"{label}-{group}-{attempt}.log", 7200)
            except RuntimeError as exc:  # the real cluster did not start
                self._error(where, "cluster", "the real cluster did not start", str(exc))
                return
            state = json.loads(out.read_text()) if out.exists() else {}
            self.results.setdefault(label, {}).update(state.get("metrics", {}))
            self.seconds.setdefault(where, {}).update(state.get("seconds", {}))
            for step, text in state.get("errors", {}).items():
                self._error(where, step, text.strip().splitlines()[-1], text)
            print(
                f"  {where}: {time.perf_counter() - start:.1f} s, rc {rc}, steps "
                + ", ".join(f"{k} {v:.1f}s" for k, v in state.get("seconds", {}).items()),
                file=sys.stderr,
            )
            running = state.get("running")
            if rc == 0:
                return
            if running is None:  # failed to start (already reported), or died outside a step
                if not state.get("errors"):
                    self._error(where, "process", f"exited with rc {rc}", _tail(log, 80))
                return
            hung = rc is None or "Timeout (" in log
            summary = (
                f"hung: still running after {self.args.step_timeout:g} s (tracebacks of its "
                f"process in {self.logdir})"
                if hung
                else f"its process died (rc {rc})"
            )
            self._error(where, running, summary, _main_thread(log) if hung else _tail(log, 80))
            if running in ("start", "shutdown"):
                return
            skip = [s for s in state.get("done", []) if s != "start"] + [running]


def _ratio(ours: float | None, other: float | None, better: str) -> float | None:
    if not ours or not other:
        return None
    return ours / other if better == "higher" else other / ours


def _fmt(v: float | None, ratio: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}x" if ratio else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


def build_rows(results: dict[str, dict[str, float]], groups: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name, unit, better, group, has_ratios in METRICS:
        if group not in groups:
            continue
        row: dict[str, Any] = {"workload": name, "unit": unit, "better": better, "group": group}
        for label, _, _ in COLUMNS:
            row[label] = results.get(label, {}).get(name)
        for label, ours, theirs in RATIOS:
            row[label] = _ratio(row[ours], row[theirs], better) if has_ratios else None
        # the keys of the embedded-only version of this script
        row.update(daskgen=row["dg-emb"], dask=row["dask-emb"])
        row.update(ratio_vs_dask=row["emb/dask"], ratio_vs_ray=row["emb/ray"])
        rows.append(row)
    return rows


def evaluate_targets(rows: list[dict[str, Any]], kinds: list[str]) -> list[dict[str, Any]]:
    """The targets of the groups and cluster kinds that ran (``n/a`` where a figure is missing:
    a backend skipped, or a workload that failed)."""
    by_name = {r["workload"]: r for r in rows}
    kind_of = {c[0]: c[2] for c in COLUMNS}
    out = []
    for t in TARGETS:
        row = by_name.get(t.metric)
        if row is None or kind_of[t.ours] not in kinds:
            continue
        ours, theirs = row[t.ours], row[t.theirs] if t.theirs else None
        if t.kind == "value":
            measured = ours
        elif t.kind == "time":
            measured = ours / theirs if ours and theirs else None
        else:
            measured = _ratio(ours, theirs, BETTER[t.metric])
        if measured is None:
            status = "n/a"
        elif t.op == ">=":
            status = "PASS" if measured >= t.threshold else "FAIL"
        else:
            status = "PASS" if measured <= t.threshold else "FAIL"
        out.append(
            {
                "target": t.label,
                "metric": t.metric,
                "ours": t.ours,
                "theirs": t.theirs,
                "kind": t.kind,
                "op": t.op,
                "threshold": t.threshold,
                "measured": measured,
                "status": status,
            }
        )
    return out


def _target_text(t: dict[str, Any]) -> str:
    unit = "" if t["kind"] == "value" else "x"
    measured = "-" if t["measured"] is None else f"{t['measured']:.3g}{unit}"
    return f"{t['target']}: {measured} (target {t['op']} {t['threshold']:g}{unit})"


def print_table(rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> None:
    labels = [c[0] for c in COLUMNS]
    ratios = [r[0] for r in RATIOS]
    header = f"{'workload':34} {'unit':>13} " + " ".join(f"{lb:>9}" for lb in labels)
    header += " " + " ".join(f"{lb:>9}" for lb in ratios)
    print(header)
    print("-" * len(header))
    for r in rows:
        line = f"{r['workload']:34} {r['unit']:>13} "
        line += " ".join(f"{_fmt(r[lb]):>9}" for lb in labels)
        line += " " + " ".join(f"{_fmt(r[lb], True):>9}" for lb in ratios)
        print(line)
    print("ratios: >1 means daskgen is better (faster, lower latency or less memory)")
    if targets:
        print("\ntargets:")
        for t in targets:
            print(f"  [{t['status']:>4}] {_target_text(t)}")


def markdown(
    rows: list[dict[str, Any]], targets: list[dict[str, Any]], machine: dict[str, Any], run: str
) -> str:
    labels = [c[0] for c in COLUMNS]
    ratios = [r[0] for r in RATIOS]
    lines = [
        "| workload | unit | " + " | ".join(labels + ratios) + " |",
        "|---|---|" + "---:|" * (len(labels) + len(ratios)),
    ]
    for r in rows:
        cells = [_fmt(r[lb]) for lb in labels] + [_fmt(r[lb], True) for lb in ratios]
        lines.append(f"| {r['workload']} | {r['unit']} | " + " | ".join(cells) + " |")
    if targets:
        lines += ["", "Targets:", ""]
        lines += [f"* **{t['status']}** {_target_text(t)}" for t in targets]
    about = ", ".join(f"{k} {v}" for k, v in machine.items())
    return "\n".join(lines) + f"\n\nRun: {run}. Machine: {about}.\n"


def _machine() -> dict[str, Any]:
    import platform

    import dask
    import distributed

    info = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "platform": platform.platform(),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--cluster",
        choices=("embedded", "real", "both"),
        default=None,
        help="cluster kind(s) for daskgen and raw Dask (default embedded, or real with --address)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="a running scheduler for the real-cluster columns (tcp://...)",
    )
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"workload groups, comma-separated: {','.join(GROUPS)}",
    )
    parser.add_argument("--quick", action="store_true", help="every workload ~10x smaller")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for timed workloads")
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=None,
        help="seconds before a workload counts as hung (default 900, quick 180)",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--markdown", default=None, help="also write a Markdown table here")
    for hidden in ("--child", "--child-init", "--kind", "--group", "--out", "--skip"):
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_timeout is None:
        args.step_timeout = 180.0 if args.quick else 900.0
    return args


def main() -> None:
    args = _parse()
    if args.child_init:
        _child_init(args.child_init, args.out)
        return
    if args.child:
        _child(args)
        return

    # a SIGTERM unwinds like Ctrl-C, so the clusters and children started here are killed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cluster = args.cluster or ("real" if args.address else "embedded")
    kinds = ["embedded", "real"] if cluster == "both" else [cluster]
    groups = [g for g in args.only.split(",") if g]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        sys.exit(f"unknown groups {sorted(unknown)}: choose from {','.join(GROUPS)}")
    backends = [b for b in args.backends.split(",") if b]
    if "ray" in backends:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray is not installed: skipping it (pip install ray==2.60.0)", file=sys.stderr)
            backends.remove("ray")
    if args.quick:
        print(
            f"QUICK run: every count x{QUICK_SCALE} of what its row's name says; the figures "
            "only show that the workloads run.",
            file=sys.stderr,
        )

    _compile_daskgen()
    runner = Runner(args)
    started = time.perf_counter()
    for group in [g for g in GROUPS if g in groups]:
        print(f"== {group}", file=sys.stderr)
        if group == "init":
            if "embedded" in kinds:
                runner.run_init(backends)
            continue
        for kind in kinds:
            for backend in backends:
                if backend != "ray":
                    runner.run_group(backend, kind, group)
        if "ray" in backends:
            runner.run_group("ray", "local", group)
    elapsed = time.perf_counter() - started

    rows = build_rows(runner.results, groups)
    targets = evaluate_targets(rows, kinds)
    print()
    print_table(rows, targets)
    if runner.errors:
        print(f"\nerrors ({len(runner.errors)}; logs in {runner.logdir}):")
        for e in runner.errors:
            print(f"  {e['where']} {e['step']}: {e['summary']}")
    else:
        import shutil

        shutil.rmtree(runner.logdir, ignore_errors=True)  # logs are kept only when needed
    run = f"{'quick, ' if args.quick else ''}{cluster} cluster, groups {','.join(groups)}"
    print(f"\ntotal {elapsed:.0f} s ({run})")
    machine = _machine()
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        report = {
            "machine": machine,
            "quick": args.quick,
            "cluster": cluster,
            "address": args.address,
            "groups": groups,
            "elapsed_s": elapsed,
            "rows": rows,
            "targets": targets,
            "errors": runner.errors,
            "step_seconds": runner.seconds,
            "raw": runner.results,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, targets, machine, f"{run}, {elapsed:.0f} s"))


if __name__ == "__main__":
    main()
