"""Tasks run on whichever worker is free first, as on Ray: calls sent while a long call of the
same function holds one worker do not wait for it when another worker is free.

Dask places a task that needs a resource (daskgen's ``CPU``) on a worker as it is submitted,
taking a long call for as short as the function's earlier calls; daskgen moves the calls left
waiting behind it (``daskgen/_scheduler/waiting.py``). The long call here is held by a socket
the test answers only once the short calls are back, so a short call that waited for it hangs
the test until ``HANG`` rather than passing slowly. ``check_*`` run on the real cluster too
(``tests/test_placement_real_cluster.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from realcluster import HANG, wait_until


def blocking_call(ray):
    """A remote function: with a port, it holds its worker until the test at that port sends
    a byte (or closes); it returns its process id."""

    @ray.remote
    def call(port=None):
        if port is not None:
            with socket.create_connection(("127.0.0.1", port), timeout=HANG) as conn:
                conn.recv(1)
        return os.getpid()

    return call


@contextlib.contextmanager
def held(call) -> Iterator[tuple[object, object]]:
    """Start ``call`` holding its worker: yields ``(its ref, accept)``; ``accept()`` waits until
    it runs. It is let go when the block ends, however it ends (not accepted: its connection
    is refused or reset, and it fails)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(HANG)
        ref = call.remote(server.getsockname()[1])
        conns = []

        def accept():
            conns.append(server.accept()[0])

        try:
            yield ref, accept
        finally:
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.sendall(b"x")
                conn.close()


def idle(ray) -> None:
    """Both CPUs free: no task of an earlier test still holds a worker."""
    wait_until(lambda: ray.available_resources().get("CPU", 0) >= 2, "both CPUs are free", HANG)


def check_calls_behind_a_long_call_run_on_the_free_worker(ray):
    idle(ray)
    call = blocking_call(ray)
    ray.get([call.remote() for _ in range(8)], timeout=HANG)  # the function is known short
    with held(call) as (long, accept):
        # sent together: the scheduler shares them out between both workers, as if the long
        # call were as short as the others
        shorts = [call.remote() for _ in range(8)]
        accept()
        pids = ray.get(shorts, timeout=HANG)  # while the long call still holds its worker
    long_pid = ray.get(long, timeout=HANG)
    assert long_pid not in pids


def check_a_wait_loop_gets_short_calls_before_a_long_one(ray):
    idle(ray)
    call = blocking_call(ray)
    ray.get([call.remote() for _ in range(8)], timeout=HANG)
    with held(call) as (long, accept):
        pending = [long] + [call.remote() for _ in range(6)]
        accept()
        for _ in range(6):
            ready, pending = ray.wait(pending, num_returns=1, timeout=HANG)
            assert ready and ready[0] != long
        assert pending == [long]
    assert ray.get(long, timeout=HANG)


def test_calls_behind_a_long_call_run_on_the_free_worker(ray):
    check_calls_behind_a_long_call_run_on_the_free_worker(ray)


def test_a_wait_loop_gets_short_calls_before_a_long_one(ray):
    check_a_wait_loop_gets_short_calls_before_a_long_one(ray)
