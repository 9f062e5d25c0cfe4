"""Faults on a real cluster (SPEC 4, 5, 7): workers SIGKILLed while they run a generator or while
they hold its yields, callers that vanish mid-generator, and a scheduler that dies under a ``get``.

Each test gets its own scheduler and two ``--no-nanny`` workers (a killed worker stays dead),
except one that checks the same on daskgen's embedded cluster (its fast lane); the
tests that use daskgen in this process begin and end with ``daskgen.shutdown()`` (the others run
their driver in a subprocess). The generators run in other processes, so they talk
to the test through files in ``tmp_path``: ``pid-<attempt>`` says which worker to kill, ``paused``
that the generator has yielded and now waits (bounded) for ``go``, ``attempt-<n>`` files
(O_EXCL) count the runs. Every value carries ``(index, attempt, payload)``: yields of at most
64 KiB travel inline to the caller, so the tests about lost values use larger payloads. Every
``get`` has a timeout that only catches hangs.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import realcluster
from realcluster import HANG, read_marker, wait_until

import daskgen
from daskgen.exceptions import ObjectLostError, RayError, WorkerCrashedError

pytestmark = [
    pytest.mark.daskgen_only,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # num_returns="dynamic"
]

# The Active Memory Manager drops surplus replicas every 2 s; the tests that make a second
# replica on purpose need it to stay where they put it.
NO_AMM = {"DASK_DISTRIBUTED__SCHEDULER__ACTIVE_MEMORY_MANAGER__START": "False"}

_attempt = realcluster.attempt_counter()
_mark, _wait_for = realcluster.file_signals()


@pytest.fixture
def cluster(tmp_path):
    with realcluster.start_cluster(tmp_path / "cluster", env=NO_AMM) as cluster:
        yield cluster


@pytest.fixture
def dg(monkeypatch, cluster):
    """daskgen connected to this test's own cluster."""
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    daskgen.shutdown()
    daskgen.init(address=cluster.address)
    yield daskgen
    daskgen.shutdown()


@pytest.fixture
def markers(tmp_path):
    path = tmp_path / "markers"
    path.mkdir()
    yield path
    (path / "go").touch()  # never leave a generator waiting for its go-file


def _attempts(markers) -> int:
    return len(list(markers.glob("attempt-*")))


def _no_task_processing(observer) -> bool:
    states = observer.run_on_scheduler(
        lambda dask_scheduler: [ts.state for ts in dask_scheduler.tasks.values()]
    )
    return "processing" not in states


def _kill_and_settle(cluster, observer, pid):
    """Kill a worker, wait until the scheduler removed it and re-ran what it re-runs."""
    cluster.kill_worker(pid)
    left = len(cluster.worker_pids())
    wait_until(
        lambda: (
            observer.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.workers)) == left
        ),
        "the scheduler removed the killed worker",
    )
    wait_until(lambda: _no_task_processing(observer), "no task is running")


# --- the generators ------------------------------------------------------------------------------

# daskgen sends yields of at most 64 KiB inline to the caller (as Ray keeps small objects in the
# owner's memory), so such values outlive their worker. LARGE values live only in the cluster:
# the tests about lost values use them; SMALL ones check the inline copies too.
SMALL = 16
LARGE = 256 * 1024


def _pausing_generator(max_retries, counts, pause_after, payload=SMALL):
    """Yields ``(i, attempt, payload bytes)`` for i < counts[attempt - 1]; attempt 1 writes
    ``paused`` after ``pause_after`` yields and waits (bounded) for ``go`` there, so that it is
    killed mid-generator."""
    attempt, mark, wait_for = _attempt, _mark, _wait_for

    @daskgen.remote(max_retries=max_retries)
    def pausing(marker_dir):
        import os

        a = attempt(marker_dir)
        mark(marker_dir, f"pid-{a}", str(os.getpid()))
        n = counts[min(a, len(counts)) - 1]
        for i in range(n):
            yield (i, a, b"x" * payload)
            if a == 1 and i == pause_after - 1:
                mark(marker_dir, "paused")
                wait_for(marker_dir, "go", HANG)

    return pausing


def _ia(values, payload=SMALL):
    """``(index, attempt)`` of each value, checking its payload came back whole."""
    assert all(len(v[2]) == payload for v in values), "a payload came back damaged"
    return [(v[0], v[1]) for v in values]


def _tens():
    """A deterministic generator: yield i is ``(10 * i, LARGE bytes)``; it writes its pid."""
    mark = _mark

    @daskgen.remote
    def tens(marker_dir, n):
        import os

        mark(marker_dir, "pid-1", str(os.getpid()))
        for i in range(n):
            yield (10 * i, b"x" * LARGE)

    return tens


def _echo():
    @daskgen.remote
    def echo(x):
        return x

    return echo


def _kill_paused_generator(cluster, markers):
    read_marker(markers, "paused")
    cluster.kill_worker(int(read_marker(markers, "pid-1")))
    (markers / "go").touch()


# --- a worker dies while it runs a generator ---------------------------------------------------

N = 5
PAUSE = 2  # yields before attempt 1 pauses and is killed


def _assert_every_index_once_in_order(pairs):
    assert [i for i, _ in pairs] == list(range(N)), pairs
    attempts = [a for _, a in pairs]
    assert attempts == sorted(attempts), f"attempts mixed out of order: {pairs}"
    assert set(attempts[PAUSE:]) == {2}, f"indices past the kill must come from the re-run: {pairs}"


@pytest.mark.parametrize("payload", [SMALL, LARGE])
def test_a_static_generator_whose_worker_is_killed_is_rerun_and_every_value_comes_back(
    dg, cluster, markers, payload
):
    gen = _pausing_generator(max_retries=1, counts=[N], pause_after=PAUSE, payload=payload)
    refs = gen.options(num_returns=N).remote(str(markers))
    delivered = _ia(dg.get(refs[:PAUSE], timeout=HANG), payload)
    assert delivered == [(0, 1), (1, 1)]

    _kill_paused_generator(cluster, markers)

    _assert_every_index_once_in_order(_ia(dg.get(refs, timeout=HANG), payload))
    assert _attempts(markers) == 2


@pytest.mark.parametrize("payload", [SMALL, LARGE])
def test_a_dynamic_generator_whose_worker_is_killed_is_rerun_and_every_value_comes_back(
    dg, cluster, markers, payload
):
    gen = _pausing_generator(max_retries=1, counts=[N], pause_after=PAUSE, payload=payload)
    outer = gen.options(num_returns="dynamic").remote(str(markers))

    _kill_paused_generator(cluster, markers)

    refs = list(dg.get(outer, timeout=HANG))
    _assert_every_index_once_in_order(_ia(dg.get(refs, timeout=HANG), payload))
    assert _attempts(markers) == 2


@pytest.mark.parametrize("payload", [SMALL, LARGE])
def test_a_streaming_generator_whose_worker_is_killed_is_rerun_and_every_value_comes_back(
    dg, cluster, markers, payload
):
    gen = _pausing_generator(max_retries=1, counts=[N], pause_after=PAUSE, payload=payload)
    stream = gen.remote(str(markers))
    delivered = _ia([dg.get(next(stream), timeout=HANG) for _ in range(PAUSE)], payload)
    assert delivered == [(0, 1), (1, 1)]

    _kill_paused_generator(cluster, markers)

    rest = _ia([dg.get(ref, timeout=HANG) for ref in stream], payload)
    _assert_every_index_once_in_order(delivered + rest)
    assert _attempts(markers) == 2


@pytest.mark.parametrize("payload", [SMALL, 2 * 1024 * 1024])
def test_on_the_embedded_cluster_a_killed_streaming_generator_is_rerun_and_every_value_comes_back(
    monkeypatch, markers, payload
):
    # daskgen's own cluster: yields are announced, and values of 1 MiB and more fetched, by the
    # workers' fast lane rather than Dask's streams. Its nanny restarts the killed worker.
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    daskgen.shutdown()
    daskgen.init(num_cpus=2)
    try:
        gen = _pausing_generator(max_retries=1, counts=[N], pause_after=PAUSE, payload=payload)
        stream = gen.remote(str(markers))
        delivered = _ia([daskgen.get(next(stream), timeout=HANG) for _ in range(PAUSE)], payload)
        assert delivered == [(0, 1), (1, 1)]
        read_marker(markers, "paused")
        os.kill(int(read_marker(markers, "pid-1")), signal.SIGKILL)
        (markers / "go").touch()
        rest = _ia([daskgen.get(ref, timeout=HANG) for ref in stream], payload)
        _assert_every_index_once_in_order(delivered + rest)
        assert _attempts(markers) == 2
    finally:
        daskgen.shutdown()


def _replicate_on_the_other_worker(dg, observer, ref):
    """Copy ``ref``'s value to the worker that does not run the paused generator: that one holds
    its only CPU, so a one-CPU task taking ``ref`` runs on the other worker and fetches it."""
    assert _ia([dg.get(_echo().remote(ref), timeout=HANG)], LARGE) == [(0, 1)]
    key = ref.key
    holders = observer.run_on_scheduler(
        lambda dask_scheduler: len(dask_scheduler.tasks[key].who_has or ())
    )
    assert holders == 2, "test setup: the value should now live on both workers"


def _assert_lost(dg, ref):
    with pytest.raises((ObjectLostError, WorkerCrashedError)):
        dg.get(ref, timeout=HANG)


def test_without_retries_a_static_generator_killed_mid_run_fails_its_missing_refs(
    dg, cluster, markers
):
    gen = _pausing_generator(max_retries=0, counts=[N], pause_after=PAUSE, payload=LARGE)
    refs = gen.options(num_returns=N).remote(str(markers))
    assert _ia(dg.get(refs[:PAUSE], timeout=HANG), LARGE) == [(0, 1), (1, 1)]
    with cluster.client() as observer:
        _replicate_on_the_other_worker(dg, observer, refs[0])

    _kill_paused_generator(cluster, markers)

    for ref in refs[PAUSE:]:
        with pytest.raises(WorkerCrashedError):
            dg.get(ref, timeout=HANG)
    assert _ia([dg.get(refs[0], timeout=HANG)], LARGE) == [(0, 1)]  # its other copy survived
    _assert_lost(dg, refs[1])  # its only copy died with the worker
    assert _attempts(markers) == 1


def test_without_retries_a_dynamic_generator_killed_mid_run_raises_worker_crashed(
    dg, cluster, markers
):
    gen = _pausing_generator(max_retries=0, counts=[N], pause_after=PAUSE)
    outer = gen.options(num_returns="dynamic").remote(str(markers))

    _kill_paused_generator(cluster, markers)

    with pytest.raises(WorkerCrashedError):
        dg.get(outer, timeout=HANG)
    assert _attempts(markers) == 1


def test_without_retries_a_streaming_generator_killed_mid_run_ends_with_worker_crashed(
    dg, cluster, markers
):
    gen = _pausing_generator(max_retries=0, counts=[N], pause_after=PAUSE, payload=LARGE)
    stream = gen.remote(str(markers))
    taken = [next(stream) for _ in range(PAUSE)]
    assert _ia(dg.get(taken, timeout=HANG), LARGE) == [(0, 1), (1, 1)]
    with cluster.client() as observer:
        _replicate_on_the_other_worker(dg, observer, taken[0])

    _kill_paused_generator(cluster, markers)

    with pytest.raises(WorkerCrashedError):
        dg.get(stream._next_sync(HANG), timeout=HANG)
    with pytest.raises(StopIteration):
        stream._next_sync(HANG)
    assert _ia([dg.get(taken[0], timeout=HANG)], LARGE) == [(0, 1)]  # its other copy survived
    _assert_lost(dg, taken[1])  # its only copy died with the worker
    assert _attempts(markers) == 1


def test_without_retries_small_yields_delivered_before_the_crash_stay_readable(
    dg, cluster, markers
):
    # Small values came inline with their yield (daskgen's choice, like Ray's small objects).
    gen = _pausing_generator(max_retries=0, counts=[N], pause_after=PAUSE, payload=SMALL)
    stream = gen.remote(str(markers))
    taken = [next(stream) for _ in range(PAUSE)]

    _kill_paused_generator(cluster, markers)

    with pytest.raises(WorkerCrashedError):
        dg.get(stream._next_sync(HANG), timeout=HANG)
    assert _ia(dg.get(taken, timeout=HANG)) == [(0, 1), (1, 1)]


def _pausing_task(max_retries):
    """A plain task returning its attempt; attempt 1 writes ``paused`` and waits for ``go``."""
    attempt, mark, wait_for = _attempt, _mark, _wait_for

    @daskgen.remote(max_retries=max_retries)
    def pausing_task(marker_dir):
        import os

        a = attempt(marker_dir)
        mark(marker_dir, f"pid-{a}", str(os.getpid()))
        if a == 1:
            mark(marker_dir, "paused")
            wait_for(marker_dir, "go", HANG)
        return a

    return pausing_task


def test_a_plain_task_whose_worker_is_killed_is_rerun_with_max_retries(dg, cluster, markers):
    ref = _pausing_task(max_retries=1).remote(str(markers))

    _kill_paused_generator(cluster, markers)

    assert dg.get(ref, timeout=HANG) == 2
    assert _attempts(markers) == 2


def test_without_retries_a_plain_task_whose_worker_is_killed_raises_worker_crashed(
    dg, cluster, markers
):
    ref = _pausing_task(max_retries=0).remote(str(markers))

    _kill_paused_generator(cluster, markers)

    with pytest.raises(WorkerCrashedError):
        dg.get(ref, timeout=HANG)
    assert _attempts(markers) == 1


def test_a_generator_killed_more_often_than_max_retries_allows_raises_worker_crashed(
    dg, cluster, markers
):
    # max_retries=1: attempt 1 and its one re-run (attempt 2) both die; no third run.
    mark, wait_for, attempt = _mark, _wait_for, _attempt

    @daskgen.remote(max_retries=1)
    def dies_twice(marker_dir):
        import os

        a = attempt(marker_dir)
        mark(marker_dir, f"pid-{a}", str(os.getpid()))
        yield a
        if a <= 2:  # the runs the test kills; a third one, if any, ends at once
            wait_for(marker_dir, "go", HANG)
        yield a

    cluster.start_worker()  # a third worker, for the re-run after the second death
    cluster.wait_for_workers(3)
    outer = dies_twice.options(num_returns="dynamic").remote(str(markers))
    cluster.kill_worker(int(read_marker(markers, "pid-1")))
    cluster.kill_worker(int(read_marker(markers, "pid-2")))

    with pytest.raises(WorkerCrashedError):
        dg.get(outer, timeout=HANG)
    assert _attempts(markers) == 2


# --- a worker holding finished yields dies ------------------------------------------------------


@pytest.mark.parametrize(
    "mode, keep_generator",
    [
        ("static", True),
        ("dynamic", True),
        ("streaming", True),
        ("dynamic", False),
        ("streaming", False),
    ],
)
def test_a_yield_lost_with_its_worker_after_the_generator_finished_is_recomputed_or_lost(
    dg, cluster, markers, mode, keep_generator
):
    n = 4
    tens = _tens()
    handle = None
    with cluster.client() as observer:
        if mode == "static":
            refs = handle = tens.options(num_returns=n).remote(str(markers), n)
        elif mode == "dynamic":
            handle = tens.options(num_returns="dynamic").remote(str(markers), n)
            refs = list(dg.get(handle, timeout=HANG))
        else:
            handle = tens.remote(str(markers), n)
            refs = list(handle)
        assert [v for v, _ in dg.get(refs, timeout=HANG)] == [0, 10, 20, 30]
        wait_until(lambda: _no_task_processing(observer), "the generator task finished")
        if not keep_generator:
            del handle
            gc.collect()

        _kill_and_settle(cluster, observer, int(read_marker(markers, "pid-1")))

        for i, ref in enumerate(refs):
            try:
                value = dg.get(ref, timeout=HANG)
            except ObjectLostError as exc:
                message = str(exc)
                assert re.search(r"(?i)\blost\b", message) and "worker" in message, message
                assert re.search(rf"\b{i}\b", message), f"which yield was lost? {message}"
            else:
                assert value[0] == 10 * i and len(value[1]) == LARGE


def test_large_yields_lost_with_their_worker_come_back_by_the_rerun_not_the_dead_wire(
    dg, cluster, markers
):
    """Yields of 2 MiB come to the driver straight from their worker (``_client.fetch``). Once
    that worker is killed, the wire to it is gone and its hints are stale: each ``get`` finds
    the re-run's copy (the re-run's announcements name its worker), with nothing lost or mixed
    and no wait on the dead worker."""
    from daskgen._client import fetch

    mark = _mark

    @daskgen.remote
    def big(marker_dir, n):
        import os

        import numpy as np

        mark(marker_dir, "pid-1", str(os.getpid()))
        for i in range(n):
            yield np.full(2**18, i, dtype=np.float64)  # 2 MiB

    with cluster.client() as observer:
        gen = big.remote(str(markers), 3)
        refs = list(gen)
        before = fetch.fetched
        assert [float(dg.get(r, timeout=HANG)[0]) for r in refs] == [0.0, 1.0, 2.0]
        assert fetch.fetched - before == 3  # by the wire
        wait_until(lambda: _no_task_processing(observer), "the generator task finished")

        _kill_and_settle(cluster, observer, int(read_marker(markers, "pid-1")))

        start = time.monotonic()
        for i, ref in enumerate(refs):
            value = dg.get(ref, timeout=HANG)
            assert value.shape == (2**18,) and (value == i).all()
        assert time.monotonic() - start < HANG


def test_a_put_value_lost_with_its_worker_raises_object_lost(dg, cluster):
    ref = dg.put(b"x" * LARGE)
    with cluster.client() as observer:
        holders = observer.who_has()  # every key: the put value is the only one
        (address,) = {a for addresses in holders.values() for a in addresses}
        pid = observer.run(os.getpid, workers=[address])[address]
        _kill_and_settle(cluster, observer, pid)

    with pytest.raises(ObjectLostError, match=r"(?i)\blost\b"):
        dg.get(ref, timeout=HANG)


# --- a re-run yields a different number of values ----------------------------------------------


def _assert_each_fails_naming_both_counts(dg, refs, first, second, error=RayError):
    for ref in refs:
        with pytest.raises(error) as exc_info:
            dg.get(ref, timeout=HANG)
        message = str(exc_info.value)
        assert re.search(rf"\b{first}\b", message) and re.search(rf"\b{second}\b", message), (
            f"the error should name both counts ({first} and {second}): {message}"
        )


@pytest.mark.parametrize("payload", [SMALL, LARGE])
def test_a_static_rerun_after_a_worker_death_that_yields_fewer_fails_the_missing_refs(
    dg, cluster, markers, payload
):
    gen = _pausing_generator(max_retries=1, counts=[6, 3], pause_after=6, payload=payload)
    refs = gen.options(num_returns=6).remote(str(markers))
    assert [i for i, _ in _ia(dg.get(refs, timeout=HANG), payload)] == list(range(6))

    _kill_paused_generator(cluster, markers)

    assert [i for i, _ in _ia(dg.get(refs[:3], timeout=HANG), payload)] == [0, 1, 2]
    _assert_each_fails_naming_both_counts(dg, refs[3:], 3, 6)


@pytest.mark.parametrize("payload", [SMALL, LARGE])
def test_a_streaming_rerun_after_a_worker_death_that_yields_fewer_fails_the_refs_it_lost(
    dg, cluster, markers, payload
):
    gen = _pausing_generator(max_retries=1, counts=[6, 3], pause_after=6, payload=payload)
    stream = gen.remote(str(markers))
    taken = [next(stream) for _ in range(6)]
    assert [i for i, _ in _ia(dg.get(taken, timeout=HANG), payload)] == list(range(6))

    _kill_paused_generator(cluster, markers)

    # The end of the stream comes after the re-run finished, so by then the client has heard
    # of the lost yields (right after the kill it may not have yet, and a small value's inline
    # copy would still be read).
    with pytest.raises(StopIteration):
        stream._next_sync(HANG)
    assert [i for i, _ in _ia(dg.get(taken[:3], timeout=HANG), payload)] == [0, 1, 2]
    _assert_each_fails_naming_both_counts(dg, taken[3:], 3, 6)


@pytest.mark.parametrize("payload", [SMALL, LARGE])
def test_a_dynamic_generator_recomputed_after_a_worker_death_with_fewer_yields_fails_the_rest(
    dg, cluster, markers, payload
):
    attempt, mark = _attempt, _mark

    @daskgen.remote(num_returns="dynamic")
    def shrinking(marker_dir):
        import os

        a = attempt(marker_dir)
        mark(marker_dir, f"pid-{a}", str(os.getpid()))
        for i in range(6 if a == 1 else 3):
            yield (i, a, b"x" * payload)

    with cluster.client() as observer:
        outer = shrinking.remote(str(markers))
        refs = list(dg.get(outer, timeout=HANG))
        assert [i for i, _ in _ia(dg.get(refs, timeout=HANG), payload)] == list(range(6))
        wait_until(lambda: _no_task_processing(observer), "the generator task finished")

        _kill_and_settle(cluster, observer, int(read_marker(markers, "pid-1")))

        if _attempts(markers) == 2:  # recomputed (the caller still holds the generator's ref)
            _assert_each_fails_naming_both_counts(dg, refs[3:], 3, 6)
        else:  # not recomputed: each value is lost (the message says so) or still attempt 1's
            for ref in refs[3:]:
                try:
                    assert dg.get(ref, timeout=HANG)[1] == 1
                except ObjectLostError as exc:
                    assert re.search(r"(?i)\blost\b", str(exc)), str(exc)
        del outer


def test_a_static_rerun_after_a_worker_death_that_yields_more_fails_every_ref(dg, cluster, markers):
    gen = _pausing_generator(max_retries=1, counts=[3, 5], pause_after=3)
    refs = gen.options(num_returns=3).remote(str(markers))
    assert [i for i, _ in _ia(dg.get(refs, timeout=HANG))] == [0, 1, 2]

    _kill_paused_generator(cluster, markers)

    _assert_each_fails_naming_both_counts(dg, refs, 5, 3, error=ValueError)


# --- the caller goes away mid-generator ----------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import daskgen

    address, marker_dir, how = sys.argv[1:4]
    daskgen.init(address=address)

    def mark(name, text=""):
        tmp = os.path.join(marker_dir, "." + name)
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(marker_dir, name))

    @daskgen.remote
    def endless(marker_dir):
        import os, time
        def mark(name, text=""):
            tmp = os.path.join(marker_dir, "." + name)
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, os.path.join(marker_dir, name))
        i = 0
        try:
            while True:
                mark("progress", str(i))
                yield i
                i += 1
                time.sleep(0.01)  # pacing, so that it does not flood the cluster
        finally:
            mark("finally", str(i))

    gen = endless.remote(marker_dir)
    for expected in range(3):
        assert daskgen.get(next(gen), timeout=60) == expected
    mark("driver-took-3")
    if how == "os._exit":
        os._exit(0)
    elif how == "SIGKILL":
        time.sleep(600)  # killed by the test
    else:
        daskgen.shutdown()
        sys.exit(0)
    """
)


@pytest.mark.parametrize("how", ["os._exit", "SIGKILL", "shutdown"])
def test_a_generator_stops_at_its_next_yield_when_its_caller_exits(
    cluster, markers, tmp_path, monkeypatch, how
):
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    daskgen.shutdown()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    with cluster.client() as observer:
        baseline = cluster.task_count(observer)
        driver = subprocess.Popen(
            [sys.executable, str(script), cluster.address, str(markers), how],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            read_marker(markers, "driver-took-3")
            if how == "SIGKILL":
                os.killpg(driver.pid, signal.SIGKILL)
            out, _ = driver.communicate(timeout=HANG)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
        if how != "SIGKILL":
            assert driver.returncode == 0, out.decode(errors="replace")

        stopped_at = int(read_marker(markers, "finally", timeout=30))
        progress = int((markers / "progress").read_text())
        assert progress == stopped_at, "the generator went on after its finally block"
        wait_until(
            lambda: cluster.task_count(observer) <= baseline,
            f"the scheduler's task count returned to {baseline}",
        )
        # and the workers are free again: a task of the test's own client runs
        assert observer.submit(lambda: 42, pure=False).result(timeout=HANG) == 42


# --- the scheduler goes away ---------------------------------------------------------------------

SLACK = 10  # seconds: what a failure may take past the timeout the caller gave


def _blocked_task():
    wait_for = _wait_for

    @daskgen.remote
    def blocked(marker_dir):
        wait_for(marker_dir, "go", HANG)
        return "done"

    return blocked


def _assert_says_the_scheduler_is_gone(exc):
    assert not isinstance(exc, daskgen.exceptions.GetTimeoutError), (
        f"a lost scheduler is not a timeout: {exc!r}"
    )
    assert re.search(r"(?i)scheduler", str(exc)), f"the error should name the scheduler: {exc!r}"


def test_get_with_a_timeout_raises_a_clear_error_within_it_when_the_scheduler_dies(
    dg, cluster, markers
):
    ref = _blocked_task().remote(str(markers))
    cluster.kill_scheduler()
    start = time.monotonic()
    with pytest.raises(Exception) as exc_info:
        dg.get(ref, timeout=20)
    assert time.monotonic() - start < 20 + SLACK
    _assert_says_the_scheduler_is_gone(exc_info.value)


def test_get_on_a_streaming_generator_raises_a_clear_error_when_the_scheduler_dies(
    dg, cluster, markers
):
    gen = _pausing_generator(max_retries=0, counts=[N], pause_after=PAUSE)
    stream = gen.remote(str(markers))
    taken = [next(stream) for _ in range(PAUSE)]
    assert _ia(dg.get(taken, timeout=HANG)) == [(0, 1), (1, 1)]
    read_marker(markers, "paused")
    cluster.kill_scheduler()
    start = time.monotonic()
    with pytest.raises(Exception) as exc_info:
        dg.get(stream._next_sync(20), timeout=20)
    assert time.monotonic() - start < 20 + SLACK
    _assert_says_the_scheduler_is_gone(exc_info.value)


NO_TIMEOUT_DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    import daskgen

    address, marker_dir = sys.argv[1:3]
    daskgen.init(address=address)

    @daskgen.remote
    def blocked(marker_dir):
        import os, time
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(marker_dir, "go")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "done"

    ref = blocked.remote(marker_dir)
    open(os.path.join(marker_dir, "submitted"), "w").close()
    while not os.path.exists(os.path.join(marker_dir, "scheduler-killed")):
        time.sleep(0.01)
    start = time.monotonic()
    try:
        value = daskgen.get(ref)  # no timeout
        outcome = {"returned": repr(value)}
    except BaseException as exc:
        outcome = {"type": type(exc).__name__, "message": str(exc),
                   "mro": [c.__name__ for c in type(exc).__mro__]}
    outcome["seconds"] = time.monotonic() - start
    print("OUTCOME " + json.dumps(outcome), flush=True)
    os._exit(0)
    """
)
# Dask's client tries to reconnect for distributed.comm.timeouts.connect (30 s) before it gives
# up; a get without timeout may take that long, not longer.
NO_TIMEOUT_BOUND = 30 + 2 * SLACK


def test_get_without_timeout_raises_a_clear_error_in_bounded_time_when_the_scheduler_dies(
    cluster, markers, tmp_path
):
    script = tmp_path / "no_timeout_driver.py"
    script.write_text(NO_TIMEOUT_DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "DASKGEN_ADDRESS"}
    driver = subprocess.Popen(
        [sys.executable, str(script), cluster.address, str(markers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        read_marker(markers, "submitted")
        cluster.kill_scheduler()
        (markers / "scheduler-killed").touch()
        try:
            out, _ = driver.communicate(timeout=NO_TIMEOUT_BOUND + 15)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"get() without timeout still blocked {NO_TIMEOUT_BOUND + 15} s after the "
                "scheduler died"
            )
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    text = out.decode(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("OUTCOME ")]
    assert lines, text
    outcome = json.loads(lines[-1].removeprefix("OUTCOME "))
    assert "returned" not in outcome, outcome
    assert outcome["seconds"] < NO_TIMEOUT_BOUND, outcome
    assert "RayError" in outcome["mro"] or "OSError" in outcome["mro"], outcome
    assert outcome["type"] != "GetTimeoutError", outcome
    assert re.search(r"(?i)scheduler", outcome["message"]), outcome
