"""A streaming generator passed to another task or actor (SPEC 10, beyond Ray: Ray 2.60 raises
``TypeError``, its issues 46934 and 52765 ask for this). The consumer iterates the refs as the
producer yields them, from where the caller stopped; one consumer only; what happens when the
consumer fails, finishes early or dies (``daskgen/_objects/handoff.py`` has the design).

Tasks run in other processes, so they report through files in ``tmp_path``
(``realcluster.file_signals``); the test waits on refs, or polls those files and the scheduler
with a bound. ``tests/test_streaming_handoff_real_cluster.py`` runs this module again on a real
cluster.
"""

from __future__ import annotations

import asyncio
import gc
import pickle

import pytest
import realcluster
from realcluster import HANG, wait_until

_mark, _wait_for = realcluster.file_signals()
_attempt = realcluster.attempt_counter()
BACKPRESSURE = 2
QUIET_WINDOW_S = 1.0  # see test_streaming.py: how long a pause must hold


def _record():
    """``record(path, text)``: one line appended to a file (made here: pickled by value)."""

    def record(path, text):
        with open(path, "a") as f:
            f.write(f"{text}\n")

    return record


def _lines(path):
    return path.read_text().split() if path.exists() else []


def _producer(ray, **options):
    """Yields 0, 10, 20, ... (``n`` values), recording each index it starts in ``progress``
    and ``done`` when it ends; raises ``ValueError`` at ``fail_at``."""
    record = _record()

    def produce(progress, n, fail_at=None):
        for i in range(n):
            record(progress, i)
            if i == fail_at:
                raise ValueError(f"boom at {i}")
            yield i * 10
        record(progress, "done")

    return ray.remote(**options)(produce) if options else ray.remote(produce)


def _collector(ray):
    @ray.remote
    def collect(gen):
        return [ray.get(ref) for ref in gen]

    return collect


def _yield_keys(ray, task):
    """How many yields of generator task ``task`` the scheduler holds."""
    from daskgen._protocol import yield_prefix

    prefix = yield_prefix(task)
    return ray.get_client().run_on_scheduler(
        lambda dask_scheduler: sum(
            1 for k in dask_scheduler.tasks if isinstance(k, tuple) and k[0] == prefix
        )
    )


def _workers(ray, n=2):
    """The addresses of ``n`` running workers (a test before may have killed one: waits for
    its nanny to start it again)."""

    def running(dask_scheduler):
        return sorted(a for a, ws in dask_scheduler.workers.items() if ws.status.name == "running")

    return wait_until(
        lambda: (lambda found: found if len(found) >= n else None)(
            ray.get_client().run_on_scheduler(running)
        ),
        f"{n} workers are running",
        HANG,
    )


def _on(ray, worker, soft=False):
    return ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(worker, soft=soft)


# --- Ray refuses; daskgen passes it --------------------------------------------------------------


def test_passing_a_streaming_generator_to_a_task(ray, backend, tmp_path):
    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)
    collect = _collector(ray)

    if backend == "ray":  # Ray 2.60: "Could not serialize the argument ..."
        with pytest.raises(TypeError):
            collect.remote(gen)
    else:
        assert ray.get(collect.remote(gen), timeout=HANG) == [0, 10, 20]


# --- the consumer gets the stream live ---------------------------------------------------------


@pytest.mark.beyond
def test_the_consumer_takes_each_ref_while_the_producer_still_runs(ray, tmp_path):
    mark, wait_for = _mark, _wait_for
    directory = str(tmp_path)

    @ray.remote
    def produce(directory):
        yield 0
        yield 1
        yield 2
        # Only a consumer that already took yield 2 can open this gate.
        yield wait_for(directory, "consumer-has-2", HANG)
        yield 4

    @ray.remote
    def consume(directory, gen):
        values = []
        for ref in gen:
            values.append(ray.get(ref))
            if len(values) == 3:
                mark(directory, "consumer-has-2")
        return values

    gen = produce.remote(directory)
    assert ray.get(consume.remote(directory, gen), timeout=HANG) == [0, 1, 2, True, 4]


@pytest.mark.beyond
@pytest.mark.parametrize("backpressure", [None, 1])
def test_a_partly_consumed_generator_continues_where_the_caller_stopped(
    ray, tmp_path, backpressure
):
    options = {"_generator_backpressure_num_objects": backpressure} if backpressure else {}
    gen = _producer(ray, **options).remote(str(tmp_path / "progress"), 5)
    first, second = next(gen), next(gen)

    rest = ray.get(_collector(ray).remote(gen), timeout=HANG)

    assert rest == [20, 30, 40]
    gc.collect()
    assert ray.get([first, second], timeout=HANG) == [0, 10]  # the caller's refs stay valid


def _wanted_by(ray, keys):
    """Which clients the scheduler says want each of ``keys``."""
    return ray.get_client().run_on_scheduler(
        lambda dask_scheduler: [
            sorted(cs.client_key for cs in dask_scheduler.tasks[k].who_wants or ())
            if k in dask_scheduler.tasks
            else None
            for k in keys
        ]
    )


@pytest.mark.beyond
def test_yields_published_before_the_handoff_move_to_the_consumer_with_their_keys(ray, tmp_path):
    mark, wait_for = _mark, _wait_for
    directory = str(tmp_path)

    @ray.remote
    def consume(directory, gen):
        mark(directory, "consumer", ray.get_client().id)  # the stream is its client's now
        if not wait_for(directory, "go", HANG):
            return "the test never opened the gate"
        return [ray.get(ref) for ref in gen]

    from daskgen._protocol import yield_key

    gen = _producer(ray).remote(str(tmp_path / "progress"), 5)
    ray.get(gen.completed(), timeout=HANG)  # all five published, to this process
    first = next(gen)
    keys = [yield_key(gen.task_key(), i) for i in range(5)]
    driver = ray.get_client().id
    try:
        ref = consume.remote(directory, gen)
        consumer = realcluster.read_marker(tmp_path, "consumer")

        expected = [[driver]] + [[consumer]] * 4  # the driver's ref; the rest the consumer's
        wait_until(lambda: _wanted_by(ray, keys) == expected, "the untaken keys moved", HANG)
    finally:
        _mark(directory, "go")
    assert ray.get(ref, timeout=HANG) == [10, 20, 30, 40]
    assert ray.get(first, timeout=HANG) == 0


@pytest.mark.beyond
@pytest.mark.parametrize("container", ["list", "dict"])
def test_a_generator_nested_in_an_argument_arrives_live(ray, tmp_path, container):
    @ray.remote
    def consume(box):
        gen = box[0] if isinstance(box, list) else box["gen"]
        assert isinstance(gen, ray.ObjectRefGenerator)
        return [ray.get(ref) for ref in gen]

    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)
    box = [gen] if container == "list" else {"gen": gen}

    assert ray.get(consume.remote(box), timeout=HANG) == [0, 10, 20]


@pytest.mark.beyond
def test_the_same_generator_twice_in_one_call_arrives_as_one_generator(ray, tmp_path):
    @ray.remote
    def consume(a, b):
        assert a is b[0]
        return [ray.get(ref) for ref in a]

    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)

    assert ray.get(consume.remote(gen, [gen]), timeout=HANG) == [0, 10, 20]


@pytest.mark.beyond
@pytest.mark.parametrize("where", ["same worker", "other worker"])
def test_a_consumer_can_pass_the_generator_on(ray, tmp_path, where):
    # On its own worker the second consumer shares the first one's state (one process).
    collect = _collector(ray)
    first_worker, other_worker = _workers(ray)

    @ray.remote
    def take_one_then_pass(gen, worker):
        first = ray.get(next(gen))
        on = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(worker, soft=False)
        return [first, *ray.get(collect.options(scheduling_strategy=on).remote(gen))]

    gen = _producer(ray).remote(str(tmp_path / "progress"), 4)
    target = first_worker if where == "same worker" else other_worker
    first = take_one_then_pass.options(scheduling_strategy=_on(ray, first_worker))

    assert ray.get(first.remote(gen, target), timeout=HANG) == [0, 10, 20, 30]


@pytest.mark.beyond
def test_a_generator_task_can_consume_a_passed_generator(ray, tmp_path):
    @ray.remote
    def doubled(gen):
        for ref in gen:
            yield 2 * ray.get(ref)

    gen = _producer(ray).remote(str(tmp_path / "progress"), 4)

    assert [ray.get(ref, timeout=HANG) for ref in doubled.remote(gen)] == [0, 20, 40, 60]


@pytest.mark.beyond
def test_a_generator_exhausted_by_the_caller_stops_at_once_in_the_consumer(ray, tmp_path):
    gen = _producer(ray).remote(str(tmp_path / "progress"), 2)
    assert ray.get(list(gen), timeout=HANG) == [0, 10]

    assert ray.get(_collector(ray).remote(gen), timeout=HANG) == []


def _parked_handoffs(ray):
    """Handoffs the scheduler keeps until their generator task reaches it."""
    return ray.get_client().run_on_scheduler(
        lambda dask_scheduler: sum(
            len(waiting) for waiting in dask_scheduler.plugins["daskgen"].handoffs.parked.values()
        )
    )


@pytest.mark.beyond
@pytest.mark.parametrize("consumer", ["task", "actor"])
def test_a_generator_passed_before_its_task_reaches_the_scheduler_waits_for_it(
    ray, tmp_path, consumer
):
    # The producer takes yield 1 of a gated num_returns=2 generator: it is submitted only once
    # that yield exists, so its consumer asks for the stream first.
    wait_for = _wait_for
    directory = str(tmp_path)

    @ray.remote(num_returns=2)
    def gated(directory):
        yield 0
        yield wait_for(directory, "go", HANG)

    @ray.remote
    def produce(opened):
        yield from [opened, "a", "b"]

    @ray.remote
    class Sink:
        def ready(self):
            return True

        def drain(self, gen):
            return [ray.get(ref) for ref in gen]

    # The actor only for its own case: the task case's two slots are the gated generator's and
    # the consumer's (an actor placed beside them may lead Dask to place the consumer behind
    # the gated task, which runs until the test lets it go).
    if consumer == "actor":
        sink = Sink.remote()
        assert ray.get(sink.ready.remote(), timeout=HANG)
        drain = sink.drain
    else:
        drain = _collector(ray)
    _, second = gated.remote(directory)
    gen = produce.remote(second)
    ref = drain.remote(gen)
    try:
        wait_until(lambda: _parked_handoffs(ray) == 1, "the handoff waits for its task", HANG)
    finally:
        _mark(directory, "go")

    assert ray.get(ref, timeout=HANG) == [True, "a", "b"]
    assert _parked_handoffs(ray) == 0


@pytest.mark.beyond
def test_a_generator_cancelled_before_it_was_passed_gives_the_consumer_the_cancellation(
    ray, tmp_path
):
    wait_for = _wait_for

    @ray.remote
    def endless(directory):
        yield 0
        wait_for(directory, "never", HANG)
        yield 1

    @ray.remote
    def consume(gen):
        out = []
        for ref in gen:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.TaskCancelledError:
                out.append("cancelled")
        return out

    gen = endless.remote(str(tmp_path))
    try:
        assert ray.get(next(gen), timeout=HANG) == 0
        ray.cancel(gen)
        assert ray.get(consume.remote(gen), timeout=HANG) == ["cancelled"]
    finally:
        _mark(str(tmp_path), "never")


# --- actors as consumers -----------------------------------------------------------------------


@pytest.mark.beyond
def test_a_sync_actor_method_consumes_a_passed_generator(ray, tmp_path):
    @ray.remote
    class Sink:
        def drain(self, gen):
            return [ray.get(ref) for ref in gen]

    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)

    assert ray.get(Sink.remote().drain.remote(gen), timeout=HANG) == [0, 10, 20]


@pytest.mark.beyond
def test_an_async_actor_method_consumes_a_passed_generator_with_async_for(ray, tmp_path):
    @ray.remote
    class AsyncSink:
        async def drain(self, gen):
            return [await ref async for ref in gen]

    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)

    assert ray.get(AsyncSink.remote().drain.remote(gen), timeout=HANG) == [0, 10, 20]


@pytest.mark.beyond
def test_an_actor_keeps_a_generator_from_its_constructor_for_later_calls(ray, tmp_path):
    @ray.remote
    class Holder:
        def __init__(self, gen):
            self.gen = gen

        def take(self, n):
            return [ray.get(next(self.gen)) for _ in range(n)]

    gen = _producer(ray).remote(str(tmp_path / "progress"), 4)
    holder = Holder.remote(gen)

    assert ray.get(holder.take.remote(1), timeout=HANG) == [0]
    assert ray.get(holder.take.remote(3), timeout=HANG) == [10, 20, 30]


@pytest.mark.beyond
def test_an_actor_method_keeps_a_passed_generator_after_it_returned(ray, tmp_path):
    # The call returns (on the actor's own connection) before any yield is taken.
    @ray.remote
    class Holder:
        def keep(self, gen):
            self.gen = gen
            return "kept"

        async def drain(self):
            return [await ref async for ref in self.gen]

    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)
    holder = Holder.remote()

    assert ray.get(holder.keep.remote(gen), timeout=HANG) == "kept"
    del gen
    gc.collect()
    assert ray.get(holder.drain.remote(), timeout=HANG) == [0, 10, 20]


@pytest.mark.beyond
def test_an_actor_methods_streaming_generator_cannot_be_passed(ray):
    @ray.remote
    class Source:
        def stream(self, n):
            yield from range(n)

    gen = Source.remote().stream.remote(2)

    with pytest.raises(TypeError, match="returned by an actor method cannot be passed"):
        _collector(ray).remote(gen)
    assert ray.get(list(gen), timeout=HANG) == [0, 1]  # still the caller's


# --- one consumer ------------------------------------------------------------------------------


@pytest.mark.beyond
def test_iterating_a_generator_after_passing_it_raises_runtime_error(ray, tmp_path):
    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)
    ref = _collector(ray).remote(gen)

    with pytest.raises(RuntimeError, match="was passed to another task or actor"):
        next(gen)
    with pytest.raises(RuntimeError, match="was passed to another task or actor"):
        asyncio.run(gen.__anext__())
    with pytest.raises(RuntimeError, match="was passed to another task or actor"):
        gen.next_ready()
    assert ray.get(ref, timeout=HANG) == [0, 10, 20]


@pytest.mark.beyond
def test_passing_a_generator_twice_raises_value_error(ray, tmp_path):
    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)
    collect = _collector(ray)
    ref = collect.remote(gen)

    with pytest.raises(ValueError, match="was passed to a task or actor already"):
        collect.remote(gen)
    assert ray.get(ref, timeout=HANG) == [0, 10, 20]


@pytest.mark.beyond
def test_a_call_whose_arguments_cannot_be_pickled_leaves_the_generator_to_the_caller(ray, tmp_path):
    import threading

    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)

    with pytest.raises(TypeError):
        _collector(ray).remote([gen, threading.Lock()])

    assert ray.get(list(gen), timeout=HANG) == [0, 10, 20]


@pytest.mark.beyond
def test_a_generator_cannot_be_pickled_outside_a_remote_call(ray, tmp_path):
    gen = _producer(ray).remote(str(tmp_path / "progress"), 1)

    with pytest.raises(TypeError, match="only be passed as an argument of a remote call"):
        pickle.dumps(gen)
    assert ray.get(list(gen), timeout=HANG) == [0]


# --- backpressure ------------------------------------------------------------------------------


def _assert_progress_stays_at_most(progress, limit):
    """No progress past ``limit`` during a quiet window (a pause is the absence of progress)."""
    import time

    deadline = time.monotonic() + QUIET_WINDOW_S
    while time.monotonic() < deadline:
        started = len(_lines(progress))
        assert started <= limit, f"producer started {started} yields, limit {limit}"
        time.sleep(0.01)


@pytest.mark.beyond
def test_backpressure_pauses_the_producer_until_the_consumer_takes_refs(ray, tmp_path):
    mark, wait_for = _mark, _wait_for
    progress = tmp_path / "progress"
    directory = str(tmp_path)

    @ray.remote
    def consume(directory, gen):
        first = ray.get(next(gen))
        mark(directory, "took-one")
        if not wait_for(directory, "go", HANG):
            return "the test never opened the gate"
        return [first, *(ray.get(ref) for ref in gen)]

    # Apart: a producer let go after a pause takes its worker's thread back (Dask's rejoin),
    # which the consumer holds while it waits for the gate.
    producer_worker, consumer_worker = _workers(ray)
    producer = _producer(ray, _generator_backpressure_num_objects=BACKPRESSURE)
    gen = producer.options(scheduling_strategy=_on(ray, producer_worker)).remote(str(progress), 10)
    ref = consume.options(scheduling_strategy=_on(ray, consumer_worker)).remote(directory, gen)
    realcluster.read_marker(tmp_path, "took-one")

    # One ref taken: the producer may start at most BACKPRESSURE + 1 yields.
    wait_until(lambda: len(_lines(progress)) >= BACKPRESSURE + 1, "the producer went on", HANG)
    _assert_progress_stays_at_most(progress, BACKPRESSURE + 1)

    _mark(directory, "go")
    assert ray.get(ref, timeout=HANG) == [i * 10 for i in range(10)]


# --- errors and endings --------------------------------------------------------------------------


def _error_aware_consumer(ray, kind):
    """``.remote(gen)`` of a task, sync actor method or async actor method that takes every ref
    (an error as ``"error: <cause>"``), then records ``"stop"`` if the next ``next`` stops."""

    def drain(gen):
        values = []
        for ref in gen:
            try:
                values.append(ray.get(ref))
            except ValueError as error:
                values.append(f"error: {error.cause}")
        try:
            next(gen)
        except StopIteration:
            values.append("stop")
        return values

    if kind == "task":
        return ray.remote(drain).remote

    @ray.remote
    class Sink:
        def drain(self, gen):
            return drain(gen)

    @ray.remote
    class AsyncSink:
        async def drain(self, gen):
            values = []
            async for ref in gen:
                try:
                    values.append(await ref)
                except ValueError as error:
                    values.append(f"error: {error.cause}")
            try:
                await gen.__anext__()
            except StopAsyncIteration:
                values.append("stop")
            return values

    return (Sink if kind == "actor" else AsyncSink).remote().drain.remote


@pytest.mark.beyond
@pytest.mark.parametrize("consumer", ["task", "actor", "async actor"])
def test_a_producer_failing_midway_gives_the_consumer_its_error_then_stop_iteration(
    ray, tmp_path, consumer
):
    gen = _producer(ray).remote(str(tmp_path / "progress"), 5, fail_at=2)

    ref = _error_aware_consumer(ray, consumer)(gen)

    assert ray.get(ref, timeout=HANG) == [0, 10, "error: boom at 2", "stop"]


@pytest.mark.beyond
def test_a_consumer_that_stops_early_releases_the_rest_and_lets_a_paused_producer_go(ray, tmp_path):
    @ray.remote
    def take_one(gen):
        return ray.get(next(gen))  # returns, and drops the generator

    progress = tmp_path / "progress"
    gen = _producer(ray, _generator_backpressure_num_objects=1).remote(str(progress), 20)
    task = gen.task_key()

    assert ray.get(take_one.remote(gen), timeout=HANG) == 0

    wait_until(lambda: "done" in _lines(progress), "the paused producer ran to its end", HANG)
    assert ray.get(gen.completed(), timeout=HANG) is None
    gc.collect()
    wait_until(lambda: _yield_keys(ray, task) == 0, "every yield was freed", HANG)


@pytest.mark.beyond
def test_the_refs_the_consumer_took_are_freed_once_it_drops_them(ray, tmp_path):
    @ray.remote
    def take_all(gen):
        return sum(ray.get(ref) for ref in gen)

    gen = _producer(ray).remote(str(tmp_path / "progress"), 5)
    task = gen.task_key()

    assert ray.get(take_all.remote(gen), timeout=HANG) == 100
    del gen
    gc.collect()
    wait_until(lambda: _yield_keys(ray, task) == 0, "every yield was freed", HANG)


@pytest.mark.beyond
def test_a_call_that_never_runs_gives_up_the_stream_and_lets_the_producer_go(ray, tmp_path):
    wait_for = _wait_for

    @ray.remote
    def blocked(directory):
        return wait_for(directory, "never", HANG)

    # Apart: a producer let go after a pause takes its worker's thread back (Dask's rejoin),
    # which the blocked task would hold.
    producer_worker, other_worker = _workers(ray)
    progress = tmp_path / "progress"
    producer = _producer(ray, _generator_backpressure_num_objects=1)
    gen = producer.options(scheduling_strategy=_on(ray, producer_worker)).remote(str(progress), 20)
    task = gen.task_key()
    wait_until(lambda: len(_lines(progress)) >= 1, "the producer started", HANG)
    gate = blocked.options(scheduling_strategy=_on(ray, other_worker)).remote(str(tmp_path))
    try:
        # It waits for its first argument, and is cancelled before it can run.
        pending = _waits_then_collects(ray).remote(gate, gen)
        ray.cancel(pending)
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(pending, timeout=HANG)
        del pending
        gc.collect()

        wait_until(lambda: "done" in _lines(progress), "the paused producer ran to its end", HANG)
        wait_until(lambda: _yield_keys(ray, task) == 0, "every yield was freed", HANG)
    finally:
        _mark(str(tmp_path), "never")  # frees the blocked task's CPU


def _waits_then_collects(ray):
    @ray.remote
    def collect_after(ready, gen):
        return [ray.get(ref) for ref in gen]

    return collect_after


@pytest.mark.beyond
def test_a_consumer_retried_after_an_error_cannot_replay_the_stream(ray, tmp_path):
    attempt = _attempt

    @ray.remote(retry_exceptions=True, max_retries=1)
    def consume(attempts, gen):
        first = ray.get(next(gen))
        if attempt(attempts) == 1:
            raise ValueError(f"the first attempt fails after taking {first}")
        return [first, *(ray.get(ref) for ref in gen)]

    gen = _producer(ray).remote(str(tmp_path / "progress"), 3)

    with pytest.raises(ray.exceptions.ObjectLostError, match="cannot replay it"):
        ray.get(consume.remote(str(tmp_path), gen), timeout=HANG)
    assert len(list(tmp_path.glob("attempt-*"))) == 1  # the second one failed at next()


# --- the consumer's worker dies ------------------------------------------------------------------


@pytest.mark.beyond
@pytest.mark.parametrize("max_retries", [3, 0])
def test_a_consumer_whose_worker_dies_fails_clearly_and_lets_the_producer_go(
    ray, tmp_path, max_retries
):
    # Re-run (max_retries=3): the new attempt cannot replay the stream, so its next() gives a
    # ref raising ObjectLostError. Not re-run: WorkerCrashedError. Either way the producer,
    # paused for its consumer, runs to its end and every yield is freed.
    mark, attempt = _mark, _attempt
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    progress = tmp_path / "progress"
    producer_worker, consumer_worker = _workers(ray)[:2]

    @ray.remote(max_retries=max_retries)
    def consume(directory, attempts, gen):
        import os

        if attempt(attempts) == 1:
            mark(directory, "took", repr([ray.get(next(gen)) for _ in range(2)]))
            os._exit(1)  # takes the whole worker process down
        return [ray.get(ref) for ref in gen]

    producer = _producer(ray, _generator_backpressure_num_objects=1)
    gen = producer.options(scheduling_strategy=_on(ray, producer_worker)).remote(str(progress), 10)
    task = gen.task_key()
    where = _on(ray, consumer_worker, soft=True)  # a re-run goes wherever it can
    ref = consume.options(scheduling_strategy=where).remote(str(tmp_path), str(attempts), gen)

    if max_retries:
        with pytest.raises(ray.exceptions.ObjectLostError, match="cannot replay it"):
            ray.get(ref, timeout=HANG)
    else:
        with pytest.raises(ray.exceptions.WorkerCrashedError):
            ray.get(ref, timeout=HANG)
    assert realcluster.read_marker(tmp_path, "took") == "[0, 10]"
    wait_until(lambda: "done" in _lines(progress), "the paused producer ran to its end", HANG)
    del gen
    gc.collect()
    wait_until(lambda: _yield_keys(ray, task) == 0, "every yield was freed", HANG)
