"""Cost of publishing one yield as its own Dask key, for daskgen's mechanism and the rejected ones.

    python benchmarks/publish_mechanisms.py [--small 2000] [--big 20]

Measured inside the producing task (what the generator thread pays per item), on daskgen's
embedded cluster (2 single-threaded worker processes):

* ``daskgen``: the value goes to the worker's memory through its event loop and one message on
  the worker's batched stream registers it (``daskgen/_publish.py``);
* ``scatter+queue``: ``get_client().scatter(v, hash=False)`` in the task, the future handed over
  through a ``distributed.Queue`` (public API only);
* ``update_data rpc``: ``Worker.update_data`` then one ``Scheduler.update_data`` request per item.

Also the end-to-end time for the caller to hold every value (daskgen, dynamic mode).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import numpy as np

import daskgen


def in_task_daskgen(n: int, size: int) -> float:
    @daskgen.remote(num_returns="dynamic")
    def produce(n, size):
        import time

        import numpy as np

        values = [np.ones(size, dtype=np.uint8) if size else i for i in range(n)]
        start = time.perf_counter()
        yield from values
        # the time from first to last yield, as the generator thread saw it
        yield time.perf_counter() - start

    refs = list(daskgen.get(produce.remote(n, size)))
    return daskgen.get(refs[-1]) / n


def in_task_scatter_queue(n: int, size: int) -> float:
    from distributed import Queue

    name = f"bench-{uuid.uuid4().hex}"
    client = daskgen.get_client()

    def produce(n, size, name):
        import time

        import numpy as np
        from distributed import Queue, get_client

        c = get_client()
        q = Queue(name)
        values = [np.ones(size, dtype=np.uint8) if size else i for i in range(n)]
        start = time.perf_counter()
        for v in values:
            q.put(c.scatter(v, hash=False))
        return (time.perf_counter() - start) / n

    per_item = client.submit(produce, n, size, name, pure=False).result()
    q = Queue(name)
    q.get(batch=n)
    return per_item


def in_task_update_data_rpc(n: int, size: int) -> float:
    client = daskgen.get_client()
    caller = client.id

    def produce(n, size, caller):
        import time

        import numpy as np
        from distributed import get_client, get_worker
        from distributed.utils import sync

        w = get_worker()
        c = get_client()
        values = [np.ones(size, dtype=np.uint8) if size else i for i in range(n)]
        token = w.get_current_task()
        start = time.perf_counter()
        for i, v in enumerate(values):
            key = (f"rpc-{token}", i)
            nbytes = sync(w.loop, _store, w, key, v)
            c.sync(
                c.scheduler.update_data,
                who_has={key: [w.address]},
                nbytes={key: nbytes},
                client=caller,
            )
        return (time.perf_counter() - start) / n

    return client.submit(produce, n, size, caller, pure=False).result()


async def _store(w, key, v):
    return w.update_data(data={key: v})["nbytes"][key]


def end_to_end_daskgen(n: int, size: int) -> float:
    @daskgen.remote(num_returns="dynamic")
    def produce(n, size):
        import numpy as np

        for i in range(n):
            yield np.ones(size, dtype=np.uint8) if size else i

    start = time.perf_counter()
    refs = list(daskgen.get(produce.remote(n, size)))
    assert len(refs) == n
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--big", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    daskgen.init(num_cpus=2)
    big = 8 * 2**20
    rows = {}
    for name, fn in [
        ("daskgen", in_task_daskgen),
        ("scatter+queue", in_task_scatter_queue),
        ("update_data rpc", in_task_update_data_rpc),
    ]:
        fn(50, 0)  # warm up
        small = min(fn(args.small, 0) for _ in range(3))
        large = min(fn(args.big, big) for _ in range(3))
        rows[name] = {"us_per_small_yield": small * 1e6, "mb_per_s_8mb": big / large / 1e6}
    e2e = min(end_to_end_daskgen(args.small, 0) for _ in range(3))
    rows["daskgen"]["e2e_us_per_small_yield"] = e2e * 1e6
    print(f"{'mechanism':18} {'us/small yield':>15} {'MB/s (8 MB)':>12}")
    for name, r in rows.items():
        print(f"{name:18} {r['us_per_small_yield']:15.1f} {r['mb_per_s_8mb']:12.0f}")
    print(f"daskgen end to end (caller holds every ref): {e2e * 1e6:.1f} us per small yield")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    daskgen.shutdown()
    _ = np


if __name__ == "__main__":
    main()
