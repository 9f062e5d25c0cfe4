"""Every example in examples/ runs on its own, on the embedded cluster, and prints its results."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.daskgen_only

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run_process(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.pop("DASKGEN_ADDRESS", None)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES.parent,
        env=full_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _run(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    return _run_process(name, *args, env=env).stdout


def test_quickstart_runs_the_seed_examples_unchanged_and_prints_their_results():
    out = _run("quickstart.py")
    assert "generator version: [(100000000, 1), (100000000, 1), (100000000, 1)]" in out
    assert "yielded return value 2" in out
    assert "Split array of size" in out and "blocks of size 1000 each." in out
    assert "get_size of the dynamic ref" in out
    assert "get_size of the generator itself" in out
    assert "static num_returns: the remaining refs raise Exception: error" in out
    assert "dynamic: the final ref raises Exception: error" in out
    assert "surplus yields: Task returned 3 objects, but num_returns=2." in out


# --- streaming_pipeline.py -----------------------------------------------------------------------


def _check_pipeline_output(out: str) -> None:
    # The readings are seeded: chunk i is centred on i / 10.
    assert "chunk  0: 200000 readings, mean +0.000" in out
    assert "chunk 23: 200000 readings, mean +2.300" in out
    assert "24 chunks, 4800000 readings, overall mean +1.150" in out
    first, whole = map(
        float, re.search(r"after ([\d.]+) s; the producer needed ([\d.]+) s", out).groups()
    )
    assert first < whole  # the first chunk was in hand while the producer was still going


def test_streaming_pipeline_consumes_each_chunk_before_the_producer_ends():
    proc = _run_process("streaming_pipeline.py")
    _check_pipeline_output(proc.stdout)
    assert "24/24" in proc.stderr  # the progress bar, from tqdm or the text bar


def test_streaming_pipeline_draws_a_text_bar_when_tqdm_is_missing(tmp_path):
    hide = tmp_path / "no_tqdm"
    (hide / "tqdm").mkdir(parents=True)
    (hide / "tqdm" / "__init__.py").write_text("raise ImportError('tqdm hidden by the test')\n")
    proc = _run_process("streaming_pipeline.py", env={"PYTHONPATH": str(hide)})
    _check_pipeline_output(proc.stdout)
    assert "chunks received: [" + "#" * 30 + "] 24/24" in proc.stderr


# --- existing_cluster.py -------------------------------------------------------------------------


def _check_cluster_output(out: str) -> None:
    assert re.search(r"connected to tcp://\S+ with 2 workers", out)
    assert out.count("resources {'CPU': ") == 2
    assert "8 tasks ran on" in out
    assert "streamed squares: [0, 1, 4, 9, 16, 25]" in out
    assert re.search(r"heavy\(1000\) with num_cpus=\d+: 499500", out)


def test_existing_cluster_starts_a_local_cluster_when_given_no_address():
    out = _run("existing_cluster.py")
    assert "started a LocalCluster at tcp://" in out
    _check_cluster_output(out)
    assert "daskgen shut down; our client is still running" in out


@pytest.fixture(scope="module")
def running_cluster():
    """A cluster the test owns, as a user's would be: the example must leave it running."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, resources={"CPU": 1}, dashboard_address=":0"
    ) as cluster:
        yield cluster


def _still_running(address: str) -> bool:
    from distributed import Client

    with Client(address, timeout="10s") as client:
        return len(client.scheduler_info()["workers"]) == 2


def test_existing_cluster_connects_to_an_address_given_as_argument(running_cluster):
    address = running_cluster.scheduler_address
    out = _run("existing_cluster.py", address)
    assert f"connected to {address} with 2 workers" in out
    _check_cluster_output(out)
    assert f"the cluster at {address} keeps running" in out
    assert _still_running(address)


def test_existing_cluster_connects_to_the_daskgen_address_variable(running_cluster):
    address = running_cluster.scheduler_address
    out = _run("existing_cluster.py", env={"DASKGEN_ADDRESS": address})
    assert f"connected to {address} with 2 workers" in out
    _check_cluster_output(out)
    assert _still_running(address)


# --- pass_dynamic_generator.py -------------------------------------------------------------------


def test_pass_dynamic_generator_hands_the_outer_ref_and_the_generator_to_tasks():
    out = _run("pass_dynamic_generator.py")
    assert "array of 10500 values, sum 55119750" in out
    assert "outer ref passed to a task: 11 blocks, sum 55119750" in out
    assert "driver holds DynamicObjectRefGenerator(11 refs)" in out
    assert "generator passed to a task: 11 blocks, sum 55119750" in out
    assert "len before iterating 11, after taking one 10" in out
    assert "nested in a list: ObjectRef -> DynamicObjectRefGenerator of 11 refs" in out
    assert "max over blocks, fanned out from a task: 10499" in out
    assert "failing generator: values [0, 1, 2], then error 'gave up after 3 values'" in out


def test_actor_generator_streams_tokens_from_a_stateful_actor():
    out = _run("actor_generator.py")
    assert "'the quick brown fox' -> [('the', 0), ('quick', 1), ('brown', 2), ('fox', 3)]" in out
    assert "('the', 0)" in out.splitlines()[1]  # the second sentence reuses the actor's state
    assert "shouted: ['QUICK#1', 'DOG#7']" in out
    assert "vocabulary size: 9" in out


def test_actor_pool_and_queue_scores_in_order_and_drains_the_queue():
    out = _run("actor_pool_and_queue.py")
    assert "scores in order: [2.17, 4.0, 3.5]" in out
    assert "scores as they finished, sorted: [2.17, 3.5, 4.0]" in out
    assert "produced: 10" in out
    assert "consumed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in out


def test_yields_to_dataframe_builds_a_dataframe_on_the_yields_and_hands_partitions_to_tasks():
    out = _run("yields_to_dataframe.py")
    assert "24 partitions, columns ['hour', 'sensor', 'celsius']" in out
    assert "persisting ran 24 tasks: one per partition" in out
    assert "240000 readings" in out
    assert "mean at east: 18.050\nmean at north: 16.050\nmean at south: 17.050" in out
    assert "readings above 24 degrees: 476" in out
    assert "first hour: (0, 'east', 12.6); of the last hour: (23, 'east', 24.1)" in out
