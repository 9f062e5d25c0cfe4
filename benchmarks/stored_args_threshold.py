"""Where storing a call's arguments as a key of their own starts to pay, against packing them
into the task (``daskgen._client.stored_args``; the threshold is ``_protocol.STORED_ARGS``).

    python benchmarks/stored_args_threshold.py [--cluster embedded|real] [--calls 100]

For NumPy arrays and lists of ints of several sizes: the time per call of ``calls`` calls each
given one such argument by value (``ray.get([f.remote(arg) for ...])``, best of 3), with every
argument packed into its task and with every argument stored. ``--cluster real`` starts a
``dask scheduler`` and two ``dask worker --nanny`` processes (the tests' fixture).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import daskgen
import daskgen._client.remote_function as remote_function

SIZES = (64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", choices=("embedded", "real"), default="embedded")
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.cluster == "real":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from realcluster import start_cluster

            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cluster = stack.enter_context(start_cluster(directory, nanny=True))
            daskgen.init(address=cluster.address)
        else:
            daskgen.init(num_cpus=2)
        stack.callback(daskgen.shutdown)
        run(args.calls)


def run(calls: int) -> None:
    @daskgen.remote
    def first(a):
        return a[0]

    stored_from = remote_function.STORED_ARGS
    try:
        for kind in ("array", "list"):
            for size in SIZES:
                arg = np.ones(size // 8) if kind == "array" else list(range(size // 5))
                cells = []
                for label, threshold in (("packed", 1 << 62), ("stored", 1)):
                    remote_function.STORED_ARGS = threshold
                    daskgen.get([first.remote(arg) for _ in range(10)])  # warm
                    best = float("inf")
                    for _ in range(3):
                        start = time.perf_counter()
                        daskgen.get([first.remote(arg) for _ in range(calls)])
                        best = min(best, time.perf_counter() - start)
                    cells.append(f"{label} {best / calls * 1e3:.2f} ms")
                print(f"{kind:5} {size >> 10:5} KiB: " + ", ".join(cells), flush=True)
    finally:
        remote_function.STORED_ARGS = stored_from


if __name__ == "__main__":
    main()
