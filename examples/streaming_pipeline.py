"""A streaming pipeline: consume a remote generator's values while it is still producing them.

    python examples/streaming_pipeline.py

A ``read_chunks`` task yields chunks of (simulated) sensor readings one by one. The driver takes
each chunk's ref as soon as it is yielded and hands it to a ``summarize`` task at once, which
runs next to the chunk (it never travels to the driver), while the producer goes on. A progress
bar counts the chunks as they arrive: tqdm when it is installed, else a plain text bar
(``ray.progress(gen)`` counts a stream too, without a known total). Backpressure keeps at most
a few unconsumed chunks in the cluster. Starts an embedded cluster; runs in a few seconds.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import daskgen as ray

N_CHUNKS = 24
CHUNK_SIZE = 200_000  # float64 readings: 1.6 MB per chunk
READ_DELAY_S = 0.05  # simulated I/O per chunk


# Pause the producer while 4 yielded chunks have not been taken by the driver.
@ray.remote(_generator_backpressure_num_objects=4)
def read_chunks(n_chunks, chunk_size, seed):
    rng = np.random.default_rng(seed)
    for i in range(n_chunks):
        time.sleep(READ_DELAY_S)
        # Sensor i drifts: its readings are centred on i / 10.
        yield rng.normal(loc=i / 10, scale=1.0, size=chunk_size)


@ray.remote
def summarize(chunk):
    return {"n": len(chunk), "mean": float(chunk.mean()), "max": float(chunk.max())}


class TextBar:
    """A minimal stand-in for tqdm: ``[#####.....] 12/24 chunks`` on stderr."""

    def __init__(self, total: int, desc: str, width: int = 30) -> None:
        self.total, self.desc, self.width, self.n = total, desc, width, 0
        self._draw()

    def update(self, k: int = 1) -> None:
        self.n += k
        self._draw()

    def close(self) -> None:
        sys.stderr.write("\n")

    def _draw(self) -> None:
        filled = self.width * self.n // self.total
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r{self.desc}: [{bar}] {self.n}/{self.total}")
        sys.stderr.flush()


def progress_bar(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return TextBar(total, desc)
    return tqdm(total=total, desc=desc, unit="chunk")


def main() -> None:
    ray.init(num_cpus=2)
    start = time.perf_counter()
    chunks = read_chunks.remote(N_CHUNKS, CHUNK_SIZE, seed=0)  # an ObjectRefGenerator
    summaries = []
    first_at = None
    bar = progress_bar(N_CHUNKS, "chunks received")
    for chunk_ref in chunks:  # each ref comes as soon as its chunk was yielded
        if first_at is None:
            first_at = time.perf_counter() - start
        summaries.append(summarize.remote(chunk_ref))  # runs where the chunk is
        bar.update(1)
    bar.close()
    ray.get(chunks.completed())
    produced_in = time.perf_counter() - start

    results = ray.get(summaries)
    for i, s in enumerate(results):
        print(f"chunk {i:2d}: {s['n']} readings, mean {s['mean']:+.3f}, max {s['max']:.3f}")
    total = sum(s["n"] for s in results)
    overall = sum(s["mean"] * s["n"] for s in results) / total
    print(f"{len(results)} chunks, {total} readings, overall mean {overall:+.3f}")
    print(
        f"first chunk in hand after {first_at:.2f} s; "
        f"the producer needed {produced_in:.2f} s for all {N_CHUNKS}"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
