"""daskgen against raw dask.distributed and Ray 2.60, same machine, one invocation.

    pip install -e ".[bench]"            # adds ray==2.60.0 and psutil
    python benchmarks/bench.py --json benchmarks/results/latest.json

Each backend runs in a fresh subprocess (so ``init`` is timed cold and nothing leaks between
them), on the same shape of cluster: 2 CPUs (daskgen's embedded cluster; ``LocalCluster`` with 2
single-threaded worker processes for raw Dask; ``ray.init(num_cpus=2)``). Ray is skipped when it
is not installed. Prints a table of absolute figures and the ratios daskgen/Dask and daskgen/Ray,
where a ratio above 1 means daskgen is better (faster, or less memory, or lower latency).

Raw Dask has no generators, so its generator rows use what a Dask user would hand-write: a task
returning a list plus one ``getitem`` task per item ("dynamic"), and ``scatter`` into a
``distributed.Queue`` from inside the task ("streaming").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

N_TINY = 2000
N_SEQ = 300
N_SMALL_YIELDS = 5000
N_BIG = 20
BIG_FLOATS = 1_000_000  # 8 MB of float64
N_PACED = 100
PACE_S = 0.02
N_HUGE = 10
N_ACTOR_CALLS = 200
HUGE_BYTES = 50_000_000

# name, unit, better ("lower"/"higher")
METRICS = [
    ("init", "s", "lower"),
    ("tiny_tasks_2000", "tasks/s", "higher"),
    ("sequential_round_trips_300", "round trips/s", "higher"),
    ("small_yields_dynamic_5000", "yields/s", "higher"),
    ("small_yields_streaming_5000", "yields/s", "higher"),
    ("big_yields_to_driver_20x8MB", "MB/s", "higher"),
    ("big_yields_on_cluster_20x8MB", "MB/s", "higher"),
    ("yield_latency_median", "ms", "lower"),
    ("yield_latency_p95", "ms", "lower"),
    ("actor_calls_sequential_200", "calls/s", "higher"),
    ("generator_peak_10x50MB", "MB", "lower"),
    ("list_peak_10x50MB", "MB", "lower"),
]


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _best(fn: Callable[[], Any], repeat: int) -> float:
    return min(_timed(fn) for _ in range(repeat))


# ------------------------------------------------------------------ daskgen and Ray (same code)


def run_ray_like(api: Any, repeat: int) -> dict[str, float]:
    out: dict[str, float] = {}
    out["init"] = _timed(lambda: api.init(num_cpus=2))

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

    api.get([tiny.remote(i) for i in range(200)])  # warm up workers and code paths
    for r in small_gen.remote(10):
        api.get(r)

    def tiny_batch():
        assert api.get([tiny.remote(i) for i in range(N_TINY)])[-1] == N_TINY - 1

    out["tiny_tasks_2000"] = N_TINY / _best(tiny_batch, repeat)

    def sequential():
        for i in range(N_SEQ):
            api.get(tiny.remote(i))

    out["sequential_round_trips_300"] = N_SEQ / _best(sequential, repeat)

    def dynamic():
        refs = list(api.get(small_gen.options(num_returns="dynamic").remote(N_SMALL_YIELDS)))
        assert api.get(refs)[-1] == N_SMALL_YIELDS - 1

    out["small_yields_dynamic_5000"] = N_SMALL_YIELDS / _best(dynamic, repeat)

    def streaming():
        last = None
        for ref in small_gen.remote(N_SMALL_YIELDS):
            last = api.get(ref)
        assert last == N_SMALL_YIELDS - 1

    out["small_yields_streaming_5000"] = N_SMALL_YIELDS / _best(streaming, repeat)

    mb = N_BIG * BIG_FLOATS * 8 / 1e6

    def to_driver():
        for i, ref in enumerate(big_gen.remote(N_BIG, BIG_FLOATS)):
            assert api.get(ref)[0] == i

    out["big_yields_to_driver_20x8MB"] = mb / _best(to_driver, repeat)

    def on_cluster():
        refs = [total.remote(ref) for ref in big_gen.remote(N_BIG, BIG_FLOATS)]
        assert api.get(refs) == [float(i) for i in range(N_BIG)]

    out["big_yields_on_cluster_20x8MB"] = mb / _best(on_cluster, repeat)

    latencies = []
    for ref in paced.remote(N_PACED, PACE_S):
        received = time.time()
        latencies.append(received - api.get(ref))
    out["yield_latency_median"] = statistics.median(latencies) * 1e3
    out["yield_latency_p95"] = statistics.quantiles(latencies, n=20)[18] * 1e3

    @api.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    counter = Counter.remote()
    api.get(counter.incr.remote())

    def actor_calls():
        for _ in range(N_ACTOR_CALLS):
            api.get(counter.incr.remote())

    out["actor_calls_sequential_200"] = N_ACTOR_CALLS / _best(actor_calls, repeat)

    gen_peak, list_peak = _peaks(api)
    out["generator_peak_10x50MB"] = gen_peak
    out["list_peak_10x50MB"] = list_peak
    api.shutdown()
    return out


def _peaks(api: Any) -> tuple[float, float]:
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
    gen = huge_gen.remote(N_HUGE, HUGE_BYTES)
    while True:
        try:
            ref = next(gen)
        except StopIteration:
            break
        value = api.get(ref)
        if isinstance(value, int):
            peak = value
        del value, ref
    _, list_peak = api.get(huge_list.remote(N_HUGE, HUGE_BYTES))
    return peak / 1e6, list_peak / 1e6


# --------------------------------------------------------------------------------------- raw Dask


def run_dask(repeat: int) -> dict[str, float]:
    import operator

    from distributed import Client, LocalCluster, Queue, get_client

    out: dict[str, float] = {}
    holder: dict[str, Any] = {}

    def start():
        holder["cluster"] = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
        holder["client"] = Client(holder["cluster"])

    out["init"] = _timed(start)
    client = holder["client"]

    def tiny(x):
        return x

    client.gather([client.submit(tiny, i, pure=False) for i in range(200)])

    def tiny_batch():
        futures = [client.submit(tiny, i, pure=False) for i in range(N_TINY)]
        assert client.gather(futures)[-1] == N_TINY - 1

    out["tiny_tasks_2000"] = N_TINY / _best(tiny_batch, repeat)

    def sequential():
        for i in range(N_SEQ):
            client.submit(tiny, i, pure=False).result()

    out["sequential_round_trips_300"] = N_SEQ / _best(sequential, repeat)

    def as_list(n):
        return list(range(n))

    def dynamic():
        whole = client.submit(as_list, N_SMALL_YIELDS, pure=False)
        parts = [
            client.submit(operator.getitem, whole, i, pure=False) for i in range(N_SMALL_YIELDS)
        ]
        assert client.gather(parts)[-1] == N_SMALL_YIELDS - 1

    out["small_yields_dynamic_5000"] = N_SMALL_YIELDS / _best(dynamic, repeat)

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
        last = None
        for fut in streaming_values(N_SMALL_YIELDS, 0):
            last = fut.result()
        assert last == N_SMALL_YIELDS - 1

    out["small_yields_streaming_5000"] = N_SMALL_YIELDS / _best(streaming, repeat)
    mb = N_BIG * BIG_FLOATS * 8 / 1e6

    def to_driver():
        for i, fut in enumerate(streaming_values(N_BIG, BIG_FLOATS)):
            assert fut.result()[0] == i

    out["big_yields_to_driver_20x8MB"] = mb / _best(to_driver, repeat)

    def first(a):
        return float(a[0])

    def on_cluster():
        futs = [client.submit(first, f, pure=False) for f in streaming_values(N_BIG, BIG_FLOATS)]
        assert client.gather(futs) == [float(i) for i in range(N_BIG)]

    out["big_yields_on_cluster_20x8MB"] = mb / _best(on_cluster, repeat)

    def paced_into_queue(name, n, pace):
        import time

        c = get_client()
        q = Queue(name)
        for _ in range(n):
            time.sleep(pace)
            q.put(c.scatter(time.time(), hash=False))
        q.put(None)

    name = f"paced-{time.monotonic_ns()}"
    q = Queue(name)
    producer = client.submit(paced_into_queue, name, N_PACED, PACE_S, pure=False)
    latencies = []
    while (fut := q.get()) is not None:
        received = time.time()
        latencies.append(received - fut.result())
    producer.result()
    out["yield_latency_median"] = statistics.median(latencies) * 1e3
    out["yield_latency_p95"] = statistics.quantiles(latencies, n=20)[18] * 1e3

    def huge_list(n, size):
        import tracemalloc

        import numpy as np

        tracemalloc.start()
        tracemalloc.reset_peak()
        values = [np.full(size, i, dtype=np.uint8) for i in range(n)]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return values, peak

    _, peak = client.submit(huge_list, N_HUGE, HUGE_BYTES, pure=False).result()
    out["list_peak_10x50MB"] = peak / 1e6
    client.close()
    holder["cluster"].close()
    return out


# -------------------------------------------------------------------------------------- driver


def _child(backend: str, repeat: int, path: str) -> None:
    if backend == "dask":
        result = run_dask(repeat)
    else:
        import importlib

        api = importlib.import_module(backend)
        result = run_ray_like(api, repeat)
    with open(path, "w") as f:
        json.dump(result, f)


def _run_backend(backend: str, repeat: int) -> dict[str, float] | None:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, __file__, "--child", backend, "--repeat", str(repeat), "--out", path]
    env = dict(os.environ, RAY_DEDUP_LOGS="0")
    proc = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=1800
    )
    if proc.returncode != 0:
        print(f"{backend} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    with open(path) as f:
        result = json.load(f)
    os.unlink(path)
    return result


def _ratio(ours: float | None, other: float | None, better: str) -> float | None:
    if not ours or not other:
        return None
    return ours / other if better == "higher" else other / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="daskgen,dask,ray")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for timed workloads")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--markdown", default=None, help="also write a Markdown table here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.repeat, args.out)
        return

    backends = args.backends.split(",")
    if "ray" in backends:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray is not installed: skipping it (pip install ray==2.60.0)", file=sys.stderr)
            backends.remove("ray")
    results = {b: _run_backend(b, args.repeat) for b in backends}
    ours = results.get("daskgen") or {}
    rows = []
    header = (
        f"{'workload':32} {'unit':>13} {'daskgen':>10} {'dask':>10} {'ray':>10} "
        f"{'vs dask':>8} {'vs ray':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, unit, better in METRICS:
        vals = {b: (results.get(b) or {}).get(name) for b in ("daskgen", "dask", "ray")}
        r_dask = _ratio(ours.get(name), vals["dask"], better)
        r_ray = _ratio(ours.get(name), vals["ray"], better)
        rows.append(
            {
                "workload": name,
                "unit": unit,
                "better": better,
                **vals,
                "ratio_vs_dask": r_dask,
                "ratio_vs_ray": r_ray,
            }
        )

        def fmt(v: float | None, ratio: bool = False) -> str:
            if v is None:
                return "-"
            return f"{v:.2f}x" if ratio else (f"{v:.3g}" if v < 100 else f"{v:.0f}")

        print(
            f"{name:32} {unit:>13} {fmt(vals['daskgen']):>10} {fmt(vals['dask']):>10} "
            f"{fmt(vals['ray']):>10} {fmt(r_dask, True):>8} {fmt(r_ray, True):>8}"
        )
    print("ratios: >1 means daskgen is better (faster, lower latency or less memory)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": _machine(), "rows": rows, "raw": results}, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(_markdown(rows, _machine()))


def _markdown(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    def cell(v: Any, ratio: bool = False) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}x" if ratio else (f"{v:.3g}" if v < 100 else f"{v:.0f}")

    lines = [
        "| workload | unit | daskgen | raw Dask | Ray | daskgen vs Dask | daskgen vs Ray |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['unit']} | {cell(r['daskgen'])} | {cell(r['dask'])} | "
            f"{cell(r['ray'])} | {cell(r['ratio_vs_dask'], True)} | "
            f"{cell(r['ratio_vs_ray'], True)} |"
        )
    about = ", ".join(f"{k} {v}" for k, v in machine.items())
    return "\n".join(lines) + f"\n\nMachine: {about}.\n"


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


if __name__ == "__main__":
    main()
