"""The ``scheduling_strategy`` option as Ray scripts use it, on the session's one-node cluster:
"DEFAULT" and "SPREAD", ``NodeAffinitySchedulingStrategy`` to the driver's node, a listed node
and a node that does not exist, and the errors for bad values. Spreading over several workers
is checked on daskgen's own clusters (``tests/test_placement.py``)."""

from __future__ import annotations

import pytest
from realcluster import HANG

UNKNOWN_NODE = "ab" * 28  # a well-formed node id that no node has
GONE = (
    "The node specified via NodeAffinitySchedulingStrategy doesn't exist any more or is "
    "infeasible, and soft=False was specified."
)


def _affinity(ray, node_id, soft):
    return ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id, soft=soft)


@pytest.fixture
def f(ray):
    @ray.remote
    def f(x):
        return x

    return f


@pytest.fixture
def Actor(ray):
    @ray.remote
    class Actor:
        def ping(self):
            return "pong"

    return Actor


def test_default_and_spread_run_tasks_and_actors(ray, f, Actor):
    for strategy in (None, "DEFAULT", "SPREAD"):
        refs = [f.options(scheduling_strategy=strategy).remote(i) for i in range(4)]
        assert ray.get(refs, timeout=HANG) == [0, 1, 2, 3]
        actor = Actor.options(scheduling_strategy=strategy).remote()
        assert ray.get(actor.ping.remote(), timeout=HANG) == "pong"


def test_node_affinity_runs_on_the_drivers_node_and_on_a_listed_node(ray, f, Actor):
    driver = ray.get_runtime_context().get_node_id()
    listed = next(n["NodeID"] for n in ray.nodes() if n["Alive"])  # Ray lists dead nodes too
    for node in (driver, listed):
        for soft in (False, True):
            strategy = _affinity(ray, node, soft)
            assert ray.get(f.options(scheduling_strategy=strategy).remote(1), timeout=HANG) == 1
            actor = Actor.options(scheduling_strategy=strategy).remote()
            assert ray.get(actor.ping.remote(), timeout=HANG) == "pong"


def test_node_affinity_to_a_node_that_does_not_exist(ray, f, Actor):
    hard = _affinity(ray, UNKNOWN_NODE, soft=False)
    with pytest.raises(ray.exceptions.TaskUnschedulableError) as info:
        ray.get(f.options(scheduling_strategy=hard).remote(1), timeout=HANG)
    assert str(info.value).startswith(f"The task is not schedulable: {GONE}")
    with pytest.raises(ray.exceptions.ActorUnschedulableError) as info:
        ray.get(Actor.options(scheduling_strategy=hard).remote().ping.remote(), timeout=HANG)
    assert str(info.value).startswith(f"The actor is not schedulable: {GONE}")
    # soft: anywhere else
    soft = _affinity(ray, UNKNOWN_NODE, soft=True)
    assert ray.get(f.options(scheduling_strategy=soft).remote(2), timeout=HANG) == 2
    actor = Actor.options(scheduling_strategy=soft).remote()
    assert ray.get(actor.ping.remote(), timeout=HANG) == "pong"


def test_bad_strategies_raise_at_once(ray, f):
    with pytest.raises(ValueError, match="Invalid scheduling_strategy value FOO"):
        f.options(scheduling_strategy="FOO").remote(1)
    with pytest.raises(TypeError, match="The type of keyword 'scheduling_strategy' must be"):
        f.options(scheduling_strategy=3).remote(1)
    with pytest.raises(ValueError, match="Invalid node_id 'nothex'. Node ID must be a valid hex"):
        f.options(scheduling_strategy=_affinity(ray, "nothex", soft=False)).remote(1)


def test_a_strategy_set_by_the_decorator_applies(ray):
    @ray.remote(scheduling_strategy="SPREAD")
    def g():
        return 1

    assert ray.get(g.remote(), timeout=HANG) == 1
