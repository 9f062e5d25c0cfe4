"""The call-semantics, actor, API-name and introspection tests (``tests/parity``) again, on a
real cluster: a ``dask scheduler`` and two ``dask worker --nanny`` processes on 127.0.0.1,
daskgen connected by address. Where the embedded cluster and a user's cluster differ (how actor
calls and results travel, cancel's messages to workers, fire-and-forget on a scheduler in
another process), the same behaviour must hold on both.

The tests are the parity modules' own, collected here with this module's ``ray`` fixture.
"""

from __future__ import annotations

import pytest
from parity.test_actor_options import *  # noqa: F403
from parity.test_actors import *  # noqa: F403
from parity.test_api_names import *  # noqa: F403
from parity.test_call_semantics import *  # noqa: F403
from parity.test_introspection import *  # noqa: F403

pytestmark = [
    pytest.mark.daskgen_only,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # num_returns="dynamic"
]


@pytest.fixture
def ray(on_real_cluster):
    """daskgen connected to the module's real cluster (``conftest.real_cluster``)."""
    return on_real_cluster
