"""``get`` of large values straight from the worker holding them, over the wire
(``daskgen._client.fetch``), on a real ``dask scheduler`` + ``dask worker`` cluster (the embedded
cluster's lane serves them there first): the values, that they came that way, and that Dask's
gather takes over where the wire cannot serve. daskgen only (Ray has no such thing)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from realcluster import HANG, start_cluster

pytestmark = pytest.mark.daskgen_only

MB = 2**20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2, nanny=True) as c:
        yield c


def _big_gen(dg):
    @dg.remote
    def big_gen(n, nbytes):
        for i in range(n):
            yield np.full(nbytes // 8, i, dtype=np.float64)

    return big_gen


def _fetched():
    from daskgen._client import fetch

    return fetch.fetched


def test_large_streamed_yields_come_straight_from_their_worker(dg, cluster):
    dg.init(address=cluster.address)
    before = _fetched()
    for mode in ("streaming", "dynamic"):
        gen = _big_gen(dg).options(num_returns=mode).remote(6, 2 * MB)
        refs = list(dg.get(gen, timeout=HANG)) if mode == "dynamic" else list(gen)
        for i, ref in enumerate(refs):
            value = dg.get(ref, timeout=HANG)
            assert value.shape == (2 * MB // 8,) and (value == i).all()
            value[0] = -1  # writable, as Dask's own values are
    assert _fetched() - before == 12


def test_a_caller_on_the_workers_host_takes_its_unix_socket(dg, cluster):
    """Same host: the caller connects by the worker's Unix socket (its name came with the
    port); a connection there shows the token too, or is closed unanswered."""
    from daskgen._client import actor_channel
    from daskgen._worker.actor_host import install

    dg.init(address=cluster.address)
    ref = next(iter(_big_gen(dg).remote(1, 2 * MB)))
    assert dg.get(ref, timeout=HANG)[0] == 0
    client = dg.get_client()
    links = [
        ch._link
        for (cid, _), ch in list(actor_channel._channels.items())
        if cid == id(client) and ch._link is not None
    ]
    assert links and {link.sock.family for link in links} == {socket.AF_UNIX}
    for _host, _port, token, name in client.run(install).values():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(HANG)
            sock.connect("\0" + name)
            sock.sendall(token[:-1] + b"?" + b"more bytes")
            assert sock.recv(10) == b""  # closed by the worker, nothing answered


def test_a_stale_hint_leaves_the_value_to_dasks_gather(dg, cluster):
    """The worker named for a value does not hold it (the hint went stale): it answers so, and
    Dask's gather fetches the value from where it is."""
    from daskgen._objects import locations

    dg.init(address=cluster.address)
    ref = next(iter(_big_gen(dg).remote(1, 2 * MB)))
    dg.wait([ref], timeout=HANG)
    holder = locations.holders([ref.key])
    (where,) = holder
    other = next(w for w in dg.get_client().scheduler_info()["workers"] if w != where)
    locations.note(other, [ref.key])
    before = _fetched()
    assert (dg.get(ref, timeout=HANG) == 0).all()
    assert _fetched() == before  # not by the wire


def test_large_bytes_come_by_the_wire_and_small_values_inline(dg, cluster):
    """Any large value, not only arrays (bytes travel inside the pickle, received into one
    buffer); small ones keep coming with their announcement."""
    dg.init(address=cluster.address)

    @dg.remote
    def gen():
        yield bytes(range(256)) * (8 * 1024)
        yield np.arange(3)

    refs = list(gen.remote())
    before = _fetched()
    assert dg.get(refs[0], timeout=HANG) == bytes(range(256)) * (8 * 1024)
    assert list(dg.get(refs[1], timeout=HANG)) == [0, 1, 2]
    assert _fetched() - before == 1
