"""``init(address="tls://...", security=Security(...))`` passes Dask's ``Security`` through to the
``Client``: tasks and generators run over TLS, and clients without the right certificates are
refused with a clear error, quickly.

The certificates are made for each run with the ``openssl`` CLI (the ``cryptography`` package is
not a dependency); without ``openssl`` the module is skipped. daskgen only; each test begins and
ends with ``daskgen.shutdown()``.
"""

from __future__ import annotations

import shutil
import time

import pytest
import realcluster
from realcluster import HANG

import daskgen

pytestmark = [
    pytest.mark.daskgen_only,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # num_returns="dynamic"
    # A refused distributed.Client complains from __del__ when it is collected.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.skipif(
        shutil.which("openssl") is None,
        reason="the openssl CLI is needed to make the test certificates (and the cryptography "
        "package is not installed)",
    ),
]

REFUSAL = 20  # seconds: a refused connection must fail well within this


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return realcluster.make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    """A certificate signed by another CA: valid TLS, but not trusted by the cluster."""
    return realcluster.make_certificates(tmp_path_factory.mktemp("other-certs"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, certs):
    with realcluster.start_cluster(tmp_path_factory.mktemp("tls-cluster"), tls=certs) as cluster:
        yield cluster


def _add_one():
    @daskgen.remote
    def add_one(x):
        return x + 1

    return add_one


def _count():
    @daskgen.remote
    def count(n):
        yield from range(n)

    return count


def test_the_cluster_listens_only_on_tls(tls_cluster):
    assert tls_cluster.address.startswith("tls://")


def test_init_with_a_tls_address_and_security_runs_a_task(dg, tls_cluster, certs):
    dg.init(address=tls_cluster.address, security=certs.security())
    assert dg.get(_add_one().remote(1), timeout=HANG) == 2


@pytest.mark.parametrize("mode", ["streaming", "dynamic", "static"])
def test_init_with_a_tls_address_and_security_runs_a_generator(dg, tls_cluster, certs, mode):
    dg.init(address=tls_cluster.address, security=certs.security())
    count = _count()
    if mode == "streaming":
        values = [dg.get(ref, timeout=HANG) for ref in count.remote(4)]
    elif mode == "dynamic":
        refs = dg.get(count.options(num_returns="dynamic").remote(4), timeout=HANG)
        values = dg.get(list(refs), timeout=HANG)
    else:
        values = dg.get(count.options(num_returns=4).remote(4), timeout=HANG)
    assert values == [0, 1, 2, 3]


def test_init_hands_the_security_object_to_the_client(dg, tls_cluster, certs):
    security = certs.security()
    client = dg.init(address=tls_cluster.address, security=security)
    assert client is dg.get_client()
    assert client.security.tls_client_cert == str(certs.cert)
    assert client.security.tls_ca_file == str(certs.ca_file)
    assert client.scheduler.address.startswith("tls://")


def test_security_also_applies_to_an_address_from_daskgen_address(
    dg, tls_cluster, certs, monkeypatch
):
    monkeypatch.setenv("DASKGEN_ADDRESS", tls_cluster.address)
    dg.init(security=certs.security())
    assert dg.get(_add_one().remote(41), timeout=HANG) == 42


def test_a_task_inside_a_task_runs_over_tls(dg, tls_cluster, certs):
    add_one = _add_one()

    @daskgen.remote
    def outer(x):
        return daskgen.get(add_one.remote(x), timeout=HANG)

    dg.init(address=tls_cluster.address, security=certs.security())
    assert dg.get(outer.remote(1), timeout=HANG) == 2


def test_actor_calls_run_over_tls_on_dasks_comm_layer(dg, tls_cluster, certs):
    """A TLS cluster's workers offer no actor wire (it is plain TCP): calls, in order, and a
    generator method, go over Dask's comm layer, encrypted as the rest."""
    from daskgen._worker.actor_host import install

    @daskgen.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

        def upto(self, n):
            yield from range(n)

    dg.init(address=tls_cluster.address, security=certs.security())
    counter = Counter.remote()
    assert dg.get([counter.add.remote(1) for _ in range(50)], timeout=HANG) == list(range(1, 51))
    assert [dg.get(r, timeout=HANG) for r in counter.upto.remote(3)] == [0, 1, 2]
    assert set(dg.get_client().run(install).values()) == {None}


def test_large_yields_reach_the_driver_over_tls_by_dasks_gather(dg, tls_cluster, certs):
    """No wire on TLS: a large yield's worker answers the driver's fetch with nothing (over
    Dask's comm layer), and Dask's gather brings the value, encrypted as the rest."""
    import numpy as np

    from daskgen._client import fetch

    @daskgen.remote
    def big(n):
        for i in range(n):
            yield np.full(2**18, i, dtype=np.float64)  # 2 MiB

    dg.init(address=tls_cluster.address, security=certs.security())
    before = fetch.fetched
    assert [float(dg.get(r, timeout=HANG)[-1]) for r in big.remote(3)] == [0.0, 1.0, 2.0]
    assert fetch.fetched == before


def test_large_arguments_are_stored_over_tls_on_dasks_comm_layer(dg, tls_cluster, certs):
    """No wire on TLS: a call's large arguments go to the worker that keeps them over Dask's
    comm layer (encrypted), and the task still runs where they are."""
    import numpy as np

    from daskgen._client import shared_memory, stored_args

    @daskgen.remote
    def total(a):
        return float(a.sum())

    dg.init(address=tls_cluster.address, security=certs.security())
    before, shared = stored_args.stored, shared_memory.lent
    arrays = [np.full(2**18, i, dtype=np.float64) for i in range(4)]  # 2 MiB each
    assert dg.get([total.remote(a) for a in arrays], timeout=HANG) == [
        i * 2.0**18 for i in range(4)
    ]
    assert stored_args.stored - before == 4
    assert shared_memory.lent == shared  # nothing lent: no wire, no file descriptors


def test_lone_calls_on_a_tls_cluster_run_direct_over_dasks_comm(dg, tls_cluster, certs):
    """No actor wire on TLS: a lone call goes straight to its leased worker on Dask's (TLS)
    comm, whose msgpack turns the call's job (a named tuple) into a plain tuple; the worker
    takes it back as a job (it failed every such call with "'tuple' object has no attribute
    'env'")."""
    dg.init(address=tls_cluster.address, security=certs.security())

    @dg.remote
    def where(x):
        import threading

        return x, threading.current_thread().name.startswith("daskgen-direct")

    def runs_direct():  # the first calls may go through the scheduler (the lease is opening)
        return dg.get(where.remote(0), timeout=HANG)[1]

    realcluster.wait_until(runs_direct, "a call runs direct", HANG)
    assert [dg.get(where.remote(i), timeout=HANG) for i in range(1, 6)] == [
        (i, True) for i in range(1, 6)
    ]


def test_a_tls_scheduler_offers_no_lane(dg, tls_cluster, certs):
    """daskgen's lane is plain TCP: on TLS its workers keep to Dask's (encrypted) streams."""
    dg.init(address=tls_cluster.address, security=certs.security())
    assert dg.get(_add_one().remote(1), timeout=HANG) == 2
    client = dg.get_client()
    offered = client.run_on_scheduler(
        lambda dask_scheduler: (
            dask_scheduler.plugins["daskgen-fast-lane"].where,
            len(dask_scheduler.plugins["daskgen-fast-lane"].ends),
        )
    )
    assert offered == (None, 0)


def _refused(dg, address, **kwargs):
    start = time.monotonic()
    with pytest.raises(Exception) as exc_info:
        dg.init(address=address, timeout=REFUSAL, **kwargs)
    elapsed = time.monotonic() - start
    assert elapsed < REFUSAL, f"refusal took {elapsed:.1f} s"
    assert not dg.is_initialized()
    return exc_info.value


def test_a_client_without_certificates_is_refused_with_a_clear_error(dg, tls_cluster):
    exc = _refused(dg, tls_cluster.address)
    assert isinstance(exc, (TypeError, ValueError, OSError)), repr(exc)
    assert "TLS" in str(exc), repr(exc)


def test_a_client_with_a_certificate_from_another_ca_is_refused(dg, tls_cluster, other_certs):
    exc = _refused(dg, tls_cluster.address, security=other_certs.security())
    assert isinstance(exc, OSError), repr(exc)
    assert "TLS" in str(exc) and "certificate" in str(exc), repr(exc)


def test_a_plain_tcp_client_is_refused_by_the_tls_scheduler(dg, tls_cluster):
    exc = _refused(dg, tls_cluster.address.replace("tls://", "tcp://", 1))
    assert isinstance(exc, OSError), repr(exc)


def test_a_refused_client_leaves_the_tls_cluster_working(dg, tls_cluster, certs, other_certs):
    _refused(dg, tls_cluster.address, security=other_certs.security())
    dg.init(address=tls_cluster.address, security=certs.security())
    assert dg.get(list(_count().remote(3)), timeout=HANG) == [0, 1, 2]
