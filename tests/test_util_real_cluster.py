"""``daskgen.util`` on a real ``dask scheduler`` + ``dask worker --nanny`` cluster, the way Ray's
documentation uses it: a pool of actors mapping over large arrays, a bounded queue between a
producer task and the driver, fire-and-forget progress reports from tasks. daskgen only (the
same calls run on both backends in ``tests/parity/test_util.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from realcluster import HANG, start_cluster, wait_until

pytestmark = pytest.mark.daskgen_only


def test_a_pool_a_queue_and_progress_reports_on_a_real_cluster(dg, tmp_path):
    from daskgen.util import ActorPool
    from daskgen.util.queue import Queue

    with start_cluster(tmp_path / "cluster", n_workers=2, nanny=True) as cluster:
        dg.init(address=cluster.address)

        @dg.remote
        class Scorer:
            def score(self, a):
                return float(a.mean())

        @dg.remote
        class Progress:
            def __init__(self):
                self.n = 0

            def report(self, k):
                self.n += k

            def total(self):
                return self.n

        @dg.remote
        def produce(queue, progress, n):
            for i in range(n):
                queue.put(np.full(2**17, i))  # 1 MiB each: stored on this worker's side
                progress.report.remote(1)  # fire-and-forget
            return n

        pool = ActorPool([Scorer.remote(), Scorer.remote()])
        work = lambda scorer, v: scorer.score.remote(np.full(2**18, v))  # noqa: E731
        assert list(pool.map(work, range(6))) == [float(v) for v in range(6)]

        queue, progress = Queue(maxsize=3), Progress.remote()
        produced = produce.remote(queue, progress, 8)
        assert [float(queue.get(timeout=HANG)[0]) for _ in range(8)] == [float(i) for i in range(8)]
        assert dg.get(produced, timeout=HANG) == 8
        wait_until(lambda: dg.get(progress.total.remote(), timeout=HANG) == 8, "8 reports", HANG)
        queue.shutdown()
