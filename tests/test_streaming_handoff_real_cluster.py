"""A streaming generator passed to another task or actor, on a real cluster: the tests of
``tests/parity/test_streaming_handoff.py`` again, on a ``dask scheduler`` and two ``dask worker
--nanny`` processes on 127.0.0.1 (the consumer that dies there takes its worker down with
``os._exit``; its nanny starts it again); and a consumer whose worker is killed from outside
(``kill_worker``, no nanny: it stays dead), re-run on the other worker or not re-run.
"""

from __future__ import annotations

import gc

import pytest
import realcluster
from parity.test_streaming_handoff import *  # noqa: F403
from parity.test_streaming_handoff import _lines, _on, _producer, _workers, _yield_keys
from realcluster import HANG, wait_until

pytestmark = [pytest.mark.daskgen_only]

_mark, _wait_for = realcluster.file_signals()
_attempt = realcluster.attempt_counter()


@pytest.fixture
def ray(on_real_cluster):
    """daskgen connected to the module's real cluster (``conftest.real_cluster``)."""
    return on_real_cluster


@pytest.mark.parametrize("max_retries", [1, 0])
def test_a_consumer_whose_worker_is_killed_fails_clearly_and_lets_the_producer_go(
    dg, tmp_path, max_retries
):
    # Re-run on the other worker (max_retries=1): the stream cannot be replayed, so the new
    # attempt's next() gives a ref raising ObjectLostError. Not re-run: WorkerCrashedError.
    # Either way the producer, paused for its consumer, runs to its end; every yield is freed.
    mark, wait_for, attempt = _mark, _wait_for, _attempt
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    progress = tmp_path / "progress"
    with realcluster.start_cluster(tmp_path / "cluster", n_workers=2) as cluster:
        dg.init(address=cluster.address)
        producer_worker, consumer_worker = _workers(dg)

        @dg.remote(max_retries=max_retries)
        def consume(directory, attempts, gen):
            import os

            if attempt(attempts) == 1:
                mark(directory, "took", repr([dg.get(next(gen)) for _ in range(2)]))
                mark(directory, "pid", str(os.getpid()))
                wait_for(directory, "never", HANG)  # its worker is killed meanwhile
                return "its worker was not killed"
            return [dg.get(ref) for ref in gen]

        producer = _producer(dg, _generator_backpressure_num_objects=1)
        where = _on(dg, producer_worker)
        gen = producer.options(scheduling_strategy=where).remote(str(progress), 10)
        task = gen.task_key()
        where = _on(dg, consumer_worker, soft=True)  # a re-run goes to the other worker
        ref = consume.options(scheduling_strategy=where).remote(str(tmp_path), str(attempts), gen)
        assert realcluster.read_marker(tmp_path, "took") == "[0, 10]"

        cluster.kill_worker(int(realcluster.read_marker(tmp_path, "pid")))

        if max_retries:
            with pytest.raises(dg.exceptions.ObjectLostError, match="cannot replay it"):
                dg.get(ref, timeout=HANG)
        else:
            with pytest.raises(dg.exceptions.WorkerCrashedError):
                dg.get(ref, timeout=HANG)
        wait_until(lambda: "done" in _lines(progress), "the paused producer ran to its end", HANG)
        del gen
        gc.collect()
        wait_until(lambda: _yield_keys(dg, task) == 0, "every yield was freed", HANG)
        assert len(list(attempts.iterdir())) == 1 + max_retries
