"""The call-semantics, actor, API-name and introspection tests (``tests/parity``) again, on a
real cluster: a ``dask scheduler`` and two ``dask worker --nanny`` processes on 127.0.0.1,
daskgen connected by address. Where the embedded cluster and a user's cluster differ (how actor
calls and results travel, cancel's messages to workers, fire-and-forget on a scheduler in
another process), the same behaviour must hold on both.

The tests are the parity modules' own, collected here with this module's ``ray`` fixture.
"""

from __future__ import annotations

import pytest
import realcluster
from parity.test_actor_options import *  # noqa: F403
from parity.test_actors import *  # noqa: F403
from parity.test_api_names import *  # noqa: F403
from parity.test_call_semantics import *  # noqa: F403
from parity.test_introspection import *  # noqa: F403

import daskgen

pytestmark = [
    pytest.mark.daskgen_only,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # num_returns="dynamic"
]


@pytest.fixture(scope="module")
def _real_cluster(tmp_path_factory):
    with realcluster.start_cluster(tmp_path_factory.mktemp("cluster"), nanny=True) as cluster:
        yield cluster


@pytest.fixture
def ray(_real_cluster, monkeypatch):
    """daskgen connected to the real cluster (the session's embedded one comes back after)."""
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    if daskgen.is_initialized() and daskgen.get_client().scheduler.address != _real_cluster.address:
        daskgen.shutdown()
    daskgen.init(address=_real_cluster.address, ignore_reinit_error=True)
    _real_cluster.wait_for_workers(2)  # a test may have killed one: its nanny restarts it
    yield daskgen


@pytest.fixture(scope="module", autouse=True)
def _back_to_the_embedded_cluster():
    yield
    daskgen.shutdown()
