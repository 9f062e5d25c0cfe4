"""Ray's errors for lost workers and unplaceable calls, as Ray code catches and prints them:
their bases and their messages (where each is raised on Dask is checked in
``tests/test_placement_real_cluster.py``, with a real nanny cluster)."""

from __future__ import annotations


def test_errors_of_lost_workers_print_their_message(ray):
    ex = ray.exceptions
    for cls in (ex.OutOfMemoryError, ex.NodeDiedError):
        err = cls("Task was killed due to the node running low on memory.")
        assert isinstance(err, ex.RayError)
        assert str(err) == "Task was killed due to the node running low on memory."
        assert not isinstance(err, ex.WorkerCrashedError)
    assert issubclass(ex.OwnerDiedError, ex.ObjectLostError)
    assert issubclass(ex.ObjectStoreFullError, ex.RayError)


def test_unschedulable_and_removed_group_errors_say_so(ray):
    ex = ray.exceptions
    assert str(ex.TaskUnschedulableError("why")) == "The task is not schedulable: why"
    assert str(ex.ActorUnschedulableError("why")) == "The actor is not schedulable: why"
    assert str(ex.TaskPlacementGroupRemoved()) == (
        "The placement group corresponding to this task has been removed."
    )
    assert str(ex.ActorPlacementGroupRemoved()) == (
        "The placement group corresponding to this Actor has been removed."
    )
