"""The embedded cluster's fast lane from workers to the scheduler (``daskgen._cluster.fastlane``).

Yield announcements and small results travel on it, and the driver fetches large values over
it; these tests check that they do, that the lane refuses strangers before unpickling anything,
that losing it never loses yields silently, and that a fetch it cannot serve falls back to
Dask. daskgen only (the lane is daskgen's transport).
"""

from __future__ import annotations

import pickle
import socket
import struct
import uuid

import pytest
from realcluster import HANG, wait_until

pytestmark = pytest.mark.daskgen_only


def _frame(payload: bytes) -> bytes:
    return struct.pack("!Q", len(payload)) + payload


def _read_frame(sock):
    """The next message from the scheduler's end, or None if it closed the connection."""
    head = sock.recv(8, socket.MSG_WAITALL)
    if not head:
        return None
    (size,) = struct.unpack("!Q", head)
    return pickle.loads(sock.recv(size, socket.MSG_WAITALL))


def _lane(dg):
    return dg.get_client().cluster.scheduler.plugins["daskgen-fast-lane"]


def _on_scheduler_loop(dg, fn):
    """Run ``fn`` on the scheduler's event loop (the embedded client shares it), and wait."""

    async def run():
        fn()

    dg.get_client().sync(run)


def _lane_counts(dask_worker):
    from daskgen._cluster import fastlane as _fastlane

    lane = _fastlane._lanes.get(dask_worker)
    return None if lane is None else (lane.sent, lane.acked)


def _waiting_generator(dg, event_name):
    @dg.remote
    def gen():
        from distributed import Event

        yield 1
        Event(event_name).wait(HANG)
        yield 2
        yield 3

    return gen


def test_each_embedded_worker_sends_yields_and_results_by_the_lane(dg):
    dg.init(num_cpus=2)
    lane = _lane(dg)
    workers = set(dg.get_client().scheduler_info()["workers"])
    assert {end.worker for end in lane.ends} == workers

    @dg.remote
    def gen(n):
        for i in range(n):  # noqa: UP028 (same code as on Ray)
            yield i

    @dg.remote
    def one():
        return 5

    before = sum(end.handled for end in lane.ends)
    assert dg.get(list(gen.remote(3)), timeout=HANG) == [0, 1, 2]
    # two at once: the second goes through the scheduler (a lone call may go straight to a
    # worker, see _client/direct.py, and its result straight back)
    assert dg.get([one.remote(), one.remote()], timeout=HANG) == [5, 5]
    # at least one publish message and one inline result; none of it on Dask's stream
    assert sum(end.handled for end in lane.ends) >= before + 2


def test_the_lane_refuses_a_wrong_token_before_unpickling_anything(dg, tmp_path):
    dg.init(num_cpus=1)
    marker = tmp_path / "unpickled"

    class Planted:
        def __reduce__(self):
            return open, (str(marker), "w")

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(HANG)
        sock.connect(_lane(dg).path)
        sock.sendall(_frame(b"x" * 32 + b"tcp://127.0.0.1:1") + _frame(pickle.dumps(Planted())))
        assert _read_frame(sock) is None  # closed by the scheduler
    assert not marker.exists()
    assert dg.get(dg.put(1), timeout=HANG) == 1


def test_the_lane_drops_messages_of_unregistered_workers_and_unknown_operations(dg):
    from distributed import Event

    dg.init(num_cpus=1)
    lane = _lane(dg)
    client = dg.get_client()
    name = f"go-{uuid.uuid4().hex}"

    @dg.remote
    def seven():
        from distributed import Event

        Event(name).wait(HANG)
        return 7

    ref = seven.remote()
    # a result for that task, as from a worker that is not (or no longer) in the cluster
    stale = {"op": "daskgen-result", "caller": client.id, "key": ref.key, "blob": pickle.dumps(42)}
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(HANG)
        sock.connect(lane.path)
        sock.sendall(_frame(lane.token + b"tcp://127.0.0.1:1") + _frame(pickle.dumps(stale)))
        assert _read_frame(sock) == ("ack", 1)  # handled: dropped
        sock.sendall(_frame(pickle.dumps({"op": "close-stream"})))
        assert _read_frame(sock) is None  # not a lane operation: closed
    Event(name, client=client).set()
    assert dg.get(ref, timeout=HANG) == 7


def test_a_lost_lane_with_unconfirmed_yields_fails_the_task_instead_of_ending_short(dg):
    from distributed import Event

    dg.init(num_cpus=2)
    lane = _lane(dg)
    client = dg.get_client()
    name = f"go-{uuid.uuid4().hex}"
    it = _waiting_generator(dg, name).remote()
    assert dg.get(next(it), timeout=HANG) == 1
    # the scheduler stops reading: what the worker sends next stays unconfirmed
    _on_scheduler_loop(dg, lambda: [end.transport.pause_reading() for end in list(lane.ends)])
    Event(name, client=client).set()
    wait_until(
        lambda: any(c and c[0] > c[1] for c in client.run(_lane_counts).values()),
        "the worker sent yields the scheduler has not confirmed",
        timeout=HANG,
    )
    _on_scheduler_loop(dg, lambda: [end.transport.abort() for end in list(lane.ends)])
    with pytest.raises(Exception, match="confirmed"):
        for ref in it:
            dg.get(ref, timeout=HANG)


def test_a_lane_closed_with_everything_confirmed_falls_back_to_dasks_stream(dg):
    from distributed import Event

    dg.init(num_cpus=2)
    client = dg.get_client()
    name = f"go-{uuid.uuid4().hex}"
    it = _waiting_generator(dg, name).remote()
    assert dg.get(next(it), timeout=HANG) == 1
    wait_until(
        lambda: all(c and c[0] == c[1] for c in client.run(_lane_counts).values()),
        "the scheduler confirmed every message",
        timeout=HANG,
    )

    def close_lane(dask_worker):
        from daskgen._cluster import fastlane as _fastlane

        _fastlane.disconnect(dask_worker)

    client.run(close_lane)
    Event(name, client=client).set()
    assert [dg.get(ref, timeout=HANG) for ref in it] == [2, 3]


class _WithLambda:
    """Large, and picklable by cloudpickle only (the lambda)."""

    def __init__(self, size):
        self.data = bytes(range(256)) * (size // 256)
        self.f = lambda x: x + 1

    def __sizeof__(self):  # what Dask measures
        return len(self.data)


def test_large_values_come_to_the_driver_by_the_lane(dg):
    import numpy as np

    dg.init(num_cpus=2)
    lane = _lane(dg)

    @dg.remote
    def big(i):
        import numpy as np

        return np.arange(300_000, dtype=np.float64) * i  # 2.4 MB

    @dg.remote
    def gen(n):
        import numpy as np

        for i in range(n):
            yield np.full((500, 600), i, dtype=np.int64)  # 2.4 MB

    @dg.remote
    def odd():
        return _WithLambda(2 << 20)

    @dg.remote
    def pair_of_arrays():
        import numpy as np

        return [np.zeros(300_000), np.ones(100)]

    before = lane.fetched
    assert np.array_equal(dg.get(big.remote(3), timeout=HANG), np.arange(300_000) * 3.0)
    for i, ref in enumerate(gen.remote(3)):
        value = dg.get(ref, timeout=HANG)
        assert value.shape == (500, 600) and value.dtype == np.int64 and (value == i).all()
    both = dg.get([big.remote(1), big.remote(2)], timeout=HANG)
    assert [float(v[1]) for v in both] == [1.0, 2.0]
    # several buffers, one small: all arrive writable, as through Dask
    pair = dg.get(pair_of_arrays.remote(), timeout=HANG)
    assert [a.flags.writeable for a in pair] == [True, True] and float(pair[1][0]) == 1.0
    holder = dg.get(odd.remote(), timeout=HANG)
    assert holder.data == bytes(range(256)) * ((2 << 20) // 256) and holder.f(1) == 2
    assert lane.fetched == before + 8


def test_large_values_come_by_dask_when_the_lane_is_gone(dg):
    import numpy as np

    dg.init(num_cpus=2)
    lane = _lane(dg)
    client = dg.get_client()

    def close_lane(dask_worker):
        from daskgen._cluster import fastlane as _fastlane

        _fastlane.disconnect(dask_worker)

    client.run(close_lane)
    wait_until(lambda: not lane.ends, "the scheduler saw the lanes close", timeout=HANG)

    @dg.remote
    def big():
        import numpy as np

        return np.ones(300_000)

    @dg.remote
    def gen():
        yield 1
        yield 2

    before = lane.fetched
    assert np.array_equal(dg.get(big.remote(), timeout=HANG), np.ones(300_000))
    assert [dg.get(ref, timeout=HANG) for ref in gen.remote()] == [1, 2]  # by Dask's stream
    assert lane.fetched == before


def test_a_fetch_cut_off_by_a_closing_lane_is_served_by_dask(dg):
    import concurrent.futures

    import numpy as np

    dg.init(num_cpus=1)
    lane = _lane(dg)
    client = dg.get_client()

    @dg.remote
    def big():
        import numpy as np

        return np.full(300_000, 7.0)

    ref = big.remote()
    dg.wait([ref], timeout=HANG)

    async def stop_reading(dask_worker):
        from daskgen._cluster import fastlane as _fastlane

        _fastlane._lanes[dask_worker].transport.pause_reading()

    client.run(stop_reading)  # the worker will not see the request
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        value = pool.submit(dg.get, ref, timeout=HANG)
        wait_until(
            lambda: any(end._pending for end in list(lane.ends)),
            "the request is sent",
            timeout=HANG,
        )

        def close_lane(dask_worker):
            from daskgen._cluster import fastlane as _fastlane

            _fastlane.disconnect(dask_worker)

        client.run(close_lane)
        assert np.array_equal(value.result(timeout=HANG), np.full(300_000, 7.0))


def test_announcements_larger_than_a_small_frame_cross_the_lane_intact(dg, monkeypatch):
    # 500 yields of 2 KiB each travel inline in one announcement of ~1 MB: written in pieces by
    # the worker, received as a large frame by the scheduler's end.
    from daskgen._cluster import fastlane as _fastlane

    large_frames = []
    allocate = _fastlane._allocate
    monkeypatch.setattr(
        _fastlane, "_allocate", lambda size: large_frames.append(size) or allocate(size)
    )
    dg.init(num_cpus=1)
    lane = _lane(dg)

    @dg.remote(num_returns="dynamic")
    def blobs(n):
        for i in range(n):
            yield bytes([i % 256]) * 2048

    before = sum(end.handled for end in lane.ends)
    refs = list(dg.get(blobs.remote(1500), timeout=HANG))
    values = dg.get(refs, timeout=HANG)
    assert values == [bytes([i % 256]) * 2048 for i in range(1500)]
    assert sum(end.handled for end in lane.ends) > before
    assert large_frames  # the scheduler's end received announcements as large frames
