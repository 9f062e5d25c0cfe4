"""Placement groups as Ray scripts use them (``ray.util.placement_group`` and
``PlacementGroupSchedulingStrategy``), on the session's one-node, 2-CPU cluster: a group's
handle and table, tasks and actors in its bundles, a group that cannot be placed, removal,
and the errors for bad arguments. Placement across several workers is checked on daskgen's
own clusters (``tests/test_placement.py``, ``tests/test_placement_real_cluster.py``).

Every group a test makes is removed at its end: on Ray a group keeps its CPUs from every
other task."""

from __future__ import annotations

import pickle

import pytest
from realcluster import HANG


@pytest.fixture
def groups(ray):
    """Make groups through ``groups(bundles, **kwargs)``; all removed after the test."""
    made = []

    def make(bundles, **kwargs):
        made.append(ray.util.placement_group(bundles, **kwargs))
        return made[-1]

    yield make
    for group in made:
        ray.util.remove_placement_group(group)


def _strategy(ray, group, index=-1, capture=None):
    cls = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy
    return cls(
        group, placement_group_bundle_index=index, placement_group_capture_child_tasks=capture
    )


def test_a_group_is_ready_through_a_ref_that_resolves_to_it(ray, groups):
    group = groups([{"CPU": 1}, {"CPU": 1}])
    ready = group.ready()
    assert isinstance(ready, ray.ObjectRef)
    assert ray.get(ready, timeout=HANG) == group
    assert group.wait(timeout_seconds=HANG) is True
    assert group.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert group.bundle_count == 2
    assert group.is_empty is False
    assert isinstance(group.id.hex(), str)
    assert pickle.loads(pickle.dumps(group)) == group


def test_the_table_shows_the_group_and_where_each_bundle_is(ray, groups):
    group = groups([{"CPU": 1}], name="daskgen-test-table")
    assert group.wait(HANG)
    table = ray.util.placement_group_table(group)
    assert table["placement_group_id"] == group.id.hex()
    assert table["name"] == "daskgen-test-table"
    assert table["bundles"] == {0: {"CPU": 1.0}}
    assert table["strategy"] == "PACK"
    assert table["state"] == "CREATED"

    @ray.remote
    def node():
        return ray.get_runtime_context().get_node_id()

    ran_on = ray.get(
        node.options(scheduling_strategy=_strategy(ray, group, 0)).remote(), timeout=HANG
    )
    assert table["bundles_to_node_id"] == {0: ran_on}
    assert group.id.hex() in ray.util.placement_group_table()


def test_a_task_in_a_bundle_knows_its_group_and_holds_the_bundles_resources(ray, groups):
    group = groups([{"CPU": 1}])  # the other CPU stays for the task outside it (Ray's books)

    @ray.remote
    def inside():
        current = ray.util.get_current_placement_group()
        return current, ray.get_runtime_context().get_assigned_resources()

    for index in (0, -1):
        strategy = _strategy(ray, group, index)
        current, resources = ray.get(
            inside.options(scheduling_strategy=strategy).remote(), timeout=HANG
        )
        assert current == group
        assert resources == {"CPU": 1.0}
    current, _ = ray.get(inside.remote(), timeout=HANG)
    assert current is None
    assert ray.util.get_current_placement_group() is None  # in the driver


def test_child_tasks_join_the_group_only_when_it_captures_them(ray, groups):
    group = groups([{"CPU": 1}, {"CPU": 1}])

    @ray.remote
    def child():
        return ray.util.get_current_placement_group()

    @ray.remote(num_cpus=0)
    def parent():
        return ray.get(child.remote(), timeout=HANG)

    captured = parent.options(scheduling_strategy=_strategy(ray, group, 0, capture=True))
    assert ray.get(captured.remote(), timeout=HANG) == group


def test_an_actor_lives_in_its_bundle_and_dies_with_the_group(ray, groups):
    group = groups([{"CPU": 1}])
    assert group.wait(HANG)

    @ray.remote
    class Where:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    actor = Where.options(scheduling_strategy=_strategy(ray, group, 0)).remote()
    node = ray.get(actor.node.remote(), timeout=HANG)
    assert ray.util.placement_group_table(group)["bundles_to_node_id"][0] == node
    ray.util.remove_placement_group(group)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(actor.node.remote(), timeout=HANG)


def test_a_group_that_cannot_be_placed_stays_pending_and_its_tasks_wait(ray, groups):
    too_big = groups([{"CPU": 100}])
    assert too_big.wait(timeout_seconds=0.5) is False
    assert ray.util.placement_group_table(too_big)["state"] == "PENDING"
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(too_big.ready(), timeout=0.5)
    # Distinct nodes (Ray) or workers (daskgen's 2) for 3 bundles: none has them.
    spread = groups([{"CPU": 0.5}] * 3, strategy="STRICT_SPREAD")
    assert spread.wait(timeout_seconds=0.5) is False

    @ray.remote
    def f():
        return 1

    waiting = f.options(scheduling_strategy=_strategy(ray, too_big, 0)).remote()
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(waiting, timeout=0.5)


def test_a_task_waiting_for_its_bundle_fails_when_the_group_is_removed(ray, groups, tmp_path):
    import realcluster

    mark, wait_for = realcluster.file_signals()
    group = groups([{"CPU": 1}])

    @ray.remote
    def hold(directory):
        mark(directory, "started")
        return wait_for(directory, "go", HANG)

    @ray.remote
    def f():
        return 1

    in_bundle = _strategy(ray, group, 0)
    hold.options(scheduling_strategy=in_bundle).remote(str(tmp_path))
    realcluster.wait_until(lambda: (tmp_path / "started").exists(), "it holds the bundle", HANG)
    waiting = f.options(scheduling_strategy=in_bundle).remote()
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(waiting, timeout=0.5)
    ray.util.remove_placement_group(group)
    try:
        with pytest.raises(ray.exceptions.TaskPlacementGroupRemoved) as info:
            ray.get(waiting, timeout=HANG)
        assert str(info.value) == (
            "The placement group corresponding to this task has been removed."
        )
    finally:
        mark(str(tmp_path), "go")  # Ray killed the running one; daskgen lets it finish


def test_a_removed_group_is_gone(ray, groups):
    group = groups([{"CPU": 1}])
    assert group.wait(HANG)
    ray.util.remove_placement_group(group)
    assert ray.util.placement_group_table(group)["state"] == "REMOVED"
    with pytest.raises(Exception, match="does not exist"):
        group.wait(timeout_seconds=1)
    with pytest.raises(ray.exceptions.TaskPlacementGroupRemoved):
        ray.get(group.ready(), timeout=HANG)
    ray.util.remove_placement_group(group)  # again: nothing happens


def test_a_named_group_is_found_by_its_name(ray, groups):
    group = groups([{"CPU": 1}], name="daskgen-test-named")
    assert ray.util.get_placement_group("daskgen-test-named") == group
    with pytest.raises(ValueError, match="Failed to look up placement group with name: nope"):
        ray.util.get_placement_group("nope")
    with pytest.raises(ray.exceptions.RaySystemError, match="already exists"):
        groups([{"CPU": 1}], name="daskgen-test-named").wait(1)


def test_a_group_passes_to_tasks(ray, groups):
    group = groups([{"CPU": 1}])

    @ray.remote
    def specs(g):
        return g.bundle_specs

    assert ray.get(specs.remote(group), timeout=HANG) == [{"CPU": 1.0}]


@pytest.mark.parametrize(
    ("bundles", "kwargs", "error"),
    [
        ([], {}, "Bundles must be a non-empty list of resource dictionaries"),
        ({"CPU": 1}, {}, "Placement group bundles must be a list, got <class 'dict'>"),
        ([{"CPU": 0}], {}, "Bundles cannot be an empty dictionary or resources with only 0"),
        ([{}], {}, "Bundles cannot be an empty dictionary or resources with only 0"),
        ([{"CPU": "1"}], {}, "Bundles must be a non-empty list of resource dictionaries"),
        ([{"CPU": 1}], {"strategy": "FOO"}, "Invalid placement group strategy FOO"),
        ([{"CPU": 1}], {"lifetime": "x"}, "Placement group `lifetime` argument must be either"),
    ],
)
def test_bad_groups_raise_value_error_at_once(ray, bundles, kwargs, error):
    with pytest.raises(ValueError, match=error):
        ray.util.placement_group(bundles, **kwargs)


def test_a_bad_bundle_index_or_a_request_no_bundle_holds_raises_value_error(ray, groups):
    group = groups([{"CPU": 1}, {"CPU": 1}])

    @ray.remote
    def f():
        return 1

    @ray.remote
    class A:
        pass

    for index in (2, 5, -2):
        with pytest.raises(ValueError, match=f"placement group bundle index {index} is invalid"):
            f.options(scheduling_strategy=_strategy(ray, group, index)).remote()
    with pytest.raises(ValueError, match="placement group bundle index 3 is invalid"):
        A.options(scheduling_strategy=_strategy(ray, group, 3)).remote()
    too_much = "because the resource request {'CPU': 2} cannot fit into any bundles"
    with pytest.raises(ValueError, match=too_much):
        f.options(num_cpus=2, scheduling_strategy=_strategy(ray, group, 0)).remote()
    with pytest.raises(ValueError, match=too_much):
        A.options(num_cpus=2, scheduling_strategy=_strategy(ray, group)).remote()
