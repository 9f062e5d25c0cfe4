"""Placement over several workers, on daskgen's embedded cluster (2 worker processes, one CPU
each): what the one-node parity tests (``tests/parity/test_placement_groups.py``,
``test_scheduling_strategies.py``) cannot show. The same checks run on a real cluster in
``tests/test_placement_real_cluster.py``."""

from __future__ import annotations

import pytest
from realcluster import HANG

pytestmark = pytest.mark.daskgen_only


def node(ray):
    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    return where


def _in(ray, group, index=-1):
    from daskgen.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)


def _workers(ray):
    return sorted(ray.get_client().scheduler_info()["workers"])


def check_strict_strategies_place_bundles_on_distinct_or_one_worker(ray):
    from daskgen.util import placement_group, placement_group_table, remove_placement_group

    where = node(ray)
    spread = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    try:
        assert spread.wait(HANG)
        table = placement_group_table(spread)["bundles_to_node_id"]
        assert sorted(table.values()) == _workers(ray)
        for index, worker in table.items():
            refs = [
                where.options(scheduling_strategy=_in(ray, spread, index)).remote()
                for _ in range(4)
            ]
            assert set(ray.get(refs, timeout=HANG)) == {worker}
        # Both workers' CPU is booked: another group waits until this one is removed.
        pack = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_PACK")
        assert pack.wait(timeout_seconds=0.5) is False
    finally:
        remove_placement_group(spread)
    try:
        assert pack.wait(HANG)
        table = placement_group_table(pack)["bundles_to_node_id"]
        assert len(set(table.values())) == 1
        half = where.options(num_cpus=0.5, scheduling_strategy=_in(ray, pack))
        refs = [half.remote() for _ in range(4)]
        assert set(ray.get(refs, timeout=HANG)) == set(table.values())
    finally:
        remove_placement_group(pack)


def test_strict_strategies_place_bundles_on_distinct_or_one_worker(ray):
    check_strict_strategies_place_bundles_on_distinct_or_one_worker(ray)


def check_spread_and_node_affinity_follow_worker_restrictions(ray):
    from daskgen.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    where = node(ray)
    workers = _workers(ray)
    spread = [where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)]
    assert set(ray.get(spread, timeout=HANG)) == set(workers)
    for worker in workers:  # a worker's address, as get_node_id() gives it in a task
        pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(worker, False))
        assert set(ray.get([pinned.remote() for _ in range(4)], timeout=HANG)) == {worker}
    # A host's NodeID (nodes()): any worker on it.
    (host,) = ray.nodes()
    on_host = where.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(host["NodeID"], soft=False)
    )
    assert set(ray.get([on_host.remote() for _ in range(4)], timeout=HANG)) <= set(workers)


def test_spread_and_node_affinity_follow_worker_restrictions(ray):
    check_spread_and_node_affinity_follow_worker_restrictions(ray)


def check_actors_keep_off_booked_workers_and_go_to_their_bundle(ray):
    from daskgen.util import placement_group, placement_group_table, remove_placement_group

    @ray.remote
    class Where:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    group = placement_group([{"CPU": 1}])
    try:
        assert group.wait(HANG)
        (booked,) = placement_group_table(group)["bundles_to_node_id"].values()
        (free,) = set(_workers(ray)) - {booked}
        outside = [Where.remote() for _ in range(3)]
        assert {ray.get(a.node.remote(), timeout=HANG) for a in outside} == {free}
        inside = Where.options(scheduling_strategy=_in(ray, group, 0)).remote()
        assert ray.get(inside.node.remote(), timeout=HANG) == booked
    finally:
        remove_placement_group(group)


def test_actors_keep_off_booked_workers_and_go_to_their_bundle(ray):
    check_actors_keep_off_booked_workers_and_go_to_their_bundle(ray)


@pytest.mark.beyond
def test_a_task_of_a_group_never_placed_fails_when_the_group_is_removed(ray):
    """Ray leaves such a task pending for ever; daskgen fails it as it fails a task waiting in
    a placed group."""
    from daskgen.util import placement_group, remove_placement_group

    where = node(ray)
    group = placement_group([{"CPU": 100}])
    waiting = where.options(scheduling_strategy=_in(ray, group, 0)).remote()
    remove_placement_group(group)
    with pytest.raises(ray.exceptions.TaskPlacementGroupRemoved):
        ray.get(waiting, timeout=HANG)
    # A call made after the removal fails too, instead of waiting.
    late = where.options(scheduling_strategy=_in(ray, group, 0)).remote()
    with pytest.raises(ray.exceptions.TaskPlacementGroupRemoved):
        ray.get(late, timeout=HANG)


def test_the_booking_plan_follows_each_strategy():
    from daskgen._scheduler.placement import plan

    free = {"a": {"CPU": 2.0}, "b": {"CPU": 1.0}}
    one = {"CPU": 1.0}
    assert plan("STRICT_PACK", [one, one], [0, 1], {}, free) == {0: "a", 1: "a"}
    assert plan("STRICT_PACK", [one, one, one], [0, 1, 2], {}, free) is None
    assert plan("PACK", [one, one, one], [0, 1, 2], {}, free) == {0: "a", 1: "a", 2: "b"}
    assert plan("SPREAD", [one, one], [0, 1], {}, free) == {0: "a", 1: "b"}
    assert plan("SPREAD", [one, one, one], [0, 1, 2], {}, free) == {0: "a", 1: "b", 2: "a"}
    assert plan("STRICT_SPREAD", [one, one, one], [0, 1, 2], {}, free) is None
    # A bundle re-booked after its worker left keeps the others' strategy (``free`` is the
    # room left beside what is booked already).
    assert plan("STRICT_SPREAD", [one, one], [1], {0: "a"}, free) == {1: "b"}
    full = {"a": {"CPU": 2.0}, "b": {"CPU": 0.0}}
    assert plan("STRICT_PACK", [one, one], [1], {0: "b"}, full) is None
    assert plan("PACK", [one, one], [1], {0: "b"}, full) == {1: "a"}
