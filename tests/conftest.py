"""Shared fixtures.

The behaviour tests in ``tests/parity`` take the API module from the ``ray`` fixture, so the same
file runs against daskgen (default) or real Ray 2.60::

    DASKGEN_TEST_BACKEND=ray pytest tests/parity

Tests marked ``beyond`` check where daskgen deliberately does better than Ray and tests marked
``daskgen_only`` check API that Ray does not have; both are skipped on the Ray backend.
"""

from __future__ import annotations

import importlib
import os

import pytest

BACKEND = os.environ.get("DASKGEN_TEST_BACKEND", "daskgen")
if BACKEND not in ("daskgen", "ray"):
    raise RuntimeError(f"DASKGEN_TEST_BACKEND must be 'daskgen' or 'ray', not {BACKEND!r}")


def pytest_collection_modifyitems(config, items):
    if BACKEND != "ray":
        return
    skip = pytest.mark.skip(reason="daskgen goes beyond Ray here (SPEC 'beyond') or API Ray lacks")
    for item in items:
        if "beyond" in item.keywords or "daskgen_only" in item.keywords:
            item.add_marker(skip)


def _init(mod):
    if BACKEND == "ray":
        mod.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    else:
        mod.init(num_cpus=2, ignore_reinit_error=True)


@pytest.fixture(scope="session")
def _session_api():
    mod = importlib.import_module(BACKEND)
    _init(mod)
    yield mod
    if BACKEND != "ray":
        # ray.shutdown() at session end sometimes exits the process with code 1 from another
        # thread (seen with Ray 2.60 here); Ray's own atexit hook cleans up instead.
        mod.shutdown()


@pytest.fixture
def ray(_session_api):
    """The API module under test (2 CPUs, worker processes), shared by the whole session.

    Re-initialised only when a lifecycle test shut it down.
    """
    if not _session_api.is_initialized():
        _init(_session_api)
    return _session_api


@pytest.fixture(scope="session")
def backend() -> str:
    return BACKEND


@pytest.fixture
def dg(monkeypatch):
    """daskgen, not initialised (a test connects it to its own cluster); shut down after."""
    import daskgen

    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    daskgen.shutdown()
    yield daskgen
    daskgen.shutdown()


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    """A real ``dask scheduler`` and two ``dask worker --nanny`` processes on 127.0.0.1 for a
    module's tests (``tests/realcluster.py``); daskgen is shut down after them, and the
    session's embedded cluster comes back with the next test that needs it."""
    import realcluster

    import daskgen

    with realcluster.start_cluster(tmp_path_factory.mktemp("cluster"), nanny=True) as cluster:
        yield cluster
        daskgen.shutdown()


@pytest.fixture
def on_real_cluster(real_cluster, monkeypatch):
    """daskgen connected to the module's ``real_cluster``, both workers in it."""
    import daskgen

    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    if daskgen.is_initialized() and daskgen.get_client().scheduler.address != real_cluster.address:
        daskgen.shutdown()
    daskgen.init(address=real_cluster.address, ignore_reinit_error=True)
    real_cluster.wait_for_workers(2)  # a test may have killed one: its nanny restarts it
    return daskgen


@pytest.fixture(params=["embedded", "real"])
def api(request, monkeypatch):
    """daskgen on the session's embedded cluster, then on a real one of two 1-thread workers
    (its own, for the test): for what travels differently between them."""
    import realcluster

    import daskgen

    if request.param == "embedded":
        if daskgen.is_initialized() and daskgen.get_client().cluster is None:
            daskgen.shutdown()  # connected to a real cluster by another test
        daskgen.init(num_cpus=2, ignore_reinit_error=True)
        yield daskgen
        return
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    daskgen.shutdown()
    tmp = request.getfixturevalue("tmp_path_factory").mktemp("cluster")
    with realcluster.start_cluster(tmp, nanny=True) as cluster:
        daskgen.init(address=cluster.address)
        try:
            yield daskgen
        finally:
            daskgen.shutdown()
