"""Ray's cluster introspection as scripts use it: ``cluster_resources()``,
``available_resources()``, ``nodes()``, ``get_gpu_ids()`` and the runtime context's resources
and actor name (the session's cluster: 2 CPUs)."""

from __future__ import annotations

import pytest
from realcluster import HANG, wait_until


def test_cluster_resources_count_the_cpus_memory_and_nodes(ray):
    # A worker that an earlier test's actor killed is back within seconds (its nanny restarts
    # it); until then Dask, unlike Ray, really has one CPU fewer: bounded polling.
    wait_until(lambda: ray.cluster_resources().get("CPU") == 2.0, "both CPUs are listed", HANG)
    total = ray.cluster_resources()
    assert total["memory"] > 0
    assert any(k.startswith("node:") and v == 1.0 for k, v in total.items())
    assert all(isinstance(v, float) for v in total.values())


def test_available_resources_drop_while_a_task_holds_a_cpu_then_come_back(ray, tmp_path):
    import realcluster

    mark, wait_for = realcluster.file_signals()

    @ray.remote
    def hold(directory):
        mark(directory, "started")
        return wait_for(directory, "go", 60)

    held = hold.remote(str(tmp_path))
    wait_until(lambda: (tmp_path / "started").exists(), "the task started", HANG)
    # Ray's view of what is in use lags (its resource reports are periodic): bounded polling.
    wait_until(lambda: ray.available_resources().get("CPU", 0.0) <= 1.0, "a CPU is held", HANG)
    mark(str(tmp_path), "go")
    assert ray.get(held, timeout=HANG) is True
    wait_until(lambda: ray.available_resources().get("CPU") == 2.0, "the CPU is free", HANG)


def test_nodes_lists_each_node_with_rays_keys(ray):
    found = ray.nodes()
    assert found
    for node in found:
        assert node["Alive"] is True and node["alive"] is True
        assert isinstance(node["NodeManagerAddress"], str) and node["NodeManagerAddress"]
        assert isinstance(node["NodeID"], str)
        assert node["Resources"]["CPU"] >= 1.0
    assert sum(n["Resources"]["CPU"] for n in found) == 2.0


def test_get_gpu_ids_is_empty_without_gpus_in_the_driver_and_in_tasks(ray):
    @ray.remote
    def gpus():
        return ray.get_gpu_ids()

    assert ray.get_gpu_ids() == []
    assert ray.get(gpus.remote(), timeout=HANG) == []


def test_the_runtime_context_names_resources_and_the_actor(ray):
    @ray.remote(num_cpus=1)
    def in_task():
        context = ray.get_runtime_context()
        return (
            context.get_assigned_resources(),
            context.get_actor_name(),
            (context.get_accelerator_ids()["GPU"]),
        )

    @ray.remote
    class Named:
        def context(self):
            context = ray.get_runtime_context()
            return context.get_actor_name(), context.get_assigned_resources()

    assert ray.get(in_task.remote(), timeout=HANG) == ({"CPU": 1.0}, None, [])
    named = Named.options(name="introspection-named").remote()
    assert ray.get(named.context.remote(), timeout=HANG) == ("introspection-named", {})
    assert ray.get(Named.remote().context.remote(), timeout=HANG) == ("", {})
    assert ray.get_runtime_context().get_actor_name() is None
    with pytest.raises(AssertionError):
        ray.get_runtime_context().get_assigned_resources()  # only inside tasks and actors
    ray.kill(named)


def test_an_async_actor_sees_its_runtime_context_on_every_call(ray):
    # Its calls after the first start from another thread than its creation (daskgen: they
    # lost the worker's context, and a get in them started a new session in the worker).
    @ray.remote
    class Async:
        async def ids(self, ref_list):
            context = ray.get_runtime_context()
            return context.get_actor_id(), ray.get(ref_list[0])

    actor = Async.remote()
    seen = [ray.get(actor.ids.remote([ray.put(i)]), timeout=HANG) for i in range(5)]

    assert [value for _, value in seen] == list(range(5))
    assert seen[0][0] is not None
    assert {actor_id for actor_id, _ in seen} == {seen[0][0]}


def test_timeline_writes_the_tasks_as_a_chrome_trace(ray, tmp_path):
    import json

    @ray.remote
    def traced(x):
        return x

    assert ray.get([traced.remote(i) for i in range(3)], timeout=HANG) == [0, 1, 2]
    path = tmp_path / "trace.json"

    def traced_events():  # Ray writes its task events a moment after they happen
        ray.timeline(filename=str(path))
        events = json.loads(path.read_text())
        return [e for e in events if "traced" in str(e.get("name"))]

    wait_until(lambda: len(traced_events()) >= 3, "3 traced tasks in the trace", HANG)
    event = traced_events()[0]
    assert event["ph"] == "X" and event["cat"].startswith("task::")
    assert event["dur"] >= 0 and event["ts"] > 0
    assert isinstance(ray.timeline(), list)
