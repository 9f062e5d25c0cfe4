"""The actor wire (``daskgen._worker.actor_wire``): direct actor calls on a plain socket of
daskgen's own, opened only to callers that show the worker's token, with Dask's comm layer
taking over where the wire cannot be reached. daskgen only (Ray has no such thing)."""

from __future__ import annotations

import socket
import threading

import pytest
from realcluster import HANG

pytestmark = pytest.mark.daskgen_only


def _counter(ray):
    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

        def where(self):
            from distributed import get_worker

            return get_worker().address

    return Counter


def _contacts(ray):
    from daskgen._worker.actor_host import install

    return ray.get_client().run(install)


def test_each_tcp_worker_offers_a_wire_on_its_own_host(ray):
    contacts = _contacts(ray)
    assert contacts
    for address, (host, port, token, local_name) in contacts.items():
        assert address.startswith("tcp://") and address.split("//")[1].split(":")[0] == host
        assert port > 0 and len(token) == 32
        assert local_name.startswith("daskgen-wire-")  # its Unix socket, for this host
    assert _contacts(ray) == contacts  # one wire per worker, however often asked


def test_a_connection_without_the_token_is_closed_and_calls_go_on(ray):
    counter = _counter(ray).remote()
    where = ray.get(counter.where.remote(), timeout=HANG)
    host, port, token, _ = _contacts(ray)[where]
    for junk in (b"\x00" * 32 + b"x" * 100, token[:-1] + b"?" + b"more bytes"):
        with socket.create_connection((host, port), timeout=HANG) as sock:
            sock.sendall(junk)
            sock.settimeout(HANG)
            assert sock.recv(10) == b""  # closed by the worker, nothing answered
    assert ray.get([counter.add.remote(1) for _ in range(10)], timeout=HANG) == list(range(1, 11))


def test_calls_from_many_threads_keep_each_threads_order(ray):
    counter = _counter(ray).remote()
    seen: dict[int, list[int]] = {}

    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, thread, i):
            self.items.append((thread, i))
            return i

        def items_of(self, thread):
            return [i for t, i in self.items if t == thread]

    log = Log.remote()

    def run(t):
        seen[t] = ray.get([log.add.remote(t, i) for i in range(200)], timeout=HANG)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
    for t in range(4):
        assert seen[t] == list(range(200))
        assert ray.get(log.items_of.remote(t), timeout=HANG) == list(range(200))
    assert ray.get(counter.add.remote(1), timeout=HANG) == 1


def test_a_worker_whose_wire_cannot_be_reached_serves_calls_over_dasks_comm(ray, caplog):
    """The wire's listening socket gone (as behind a firewall): a new caller connection logs
    a warning and takes Dask's comm layer; the calls still run, in order."""
    import daskgen
    from daskgen._client import actor_channel

    counter = _counter(ray).remote()
    where = ray.get(counter.where.remote(), timeout=HANG)

    def shut_the_wire(dask_worker):
        from daskgen._worker.actor_host import _wires

        _wires[dask_worker].close()  # the port stops answering; the contact stays

    ray.get_client().run(shut_the_wire, workers=[where])
    client = daskgen.get_client()
    with actor_channel._channels_lock:
        old = actor_channel._channels.pop((id(client), where))  # a new caller connection
    try:
        with caplog.at_level("WARNING", logger="daskgen"):
            assert ray.get([counter.add.remote(2) for _ in range(5)], timeout=HANG) == [
                2,
                4,
                6,
                8,
                10,
            ]
        assert any("cannot be reached" in r.getMessage() for r in caplog.records)
        new = actor_channel._channels[(id(client), where)]
        assert type(new._link).__name__ == "_DaskLink"
    finally:
        old._link.close()
        # Later tests get a worker with a wire again: restart the workers' wires.
        ray.get_client().run(_reopen, workers=[where])
        with actor_channel._channels_lock:
            actor_channel._channels.pop((id(client), where), None)
    assert ray.get(counter.add.remote(0), timeout=HANG) == 10  # on a wire again
    assert type(actor_channel._channels[(id(client), where)]._link).__name__ == "WireLink"


def _reopen(dask_worker):
    from daskgen._worker.actor_host import _wires, install

    _wires.pop(dask_worker).close()
    install(dask_worker)
