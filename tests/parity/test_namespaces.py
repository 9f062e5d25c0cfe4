"""Namespaces as Ray 2.60 has them: a named actor's name is scoped by the creating job's
namespace (``init(namespace=)``, else an anonymous one) unless its ``namespace=`` option says
another; lookups and listings happen in the caller's namespace, which tasks and actors take from
the driver that made the call; a detached actor keeps its namespace after its driver has gone.

Everything here passes on Ray 2.60 and on daskgen (``DASKGEN_TEST_BACKEND=ray``); the
``reinit`` fixture starts the backend again with other ``init`` keywords (the real-cluster run,
``tests/test_jobs_real_cluster.py``, gives its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from realcluster import HANG, wait_until


@pytest.fixture
def reinit(ray, backend):
    """``reinit(**init_keywords)``: the backend shut down and started again with them (the
    test's own session is shut down after the test, and the ``ray`` fixture starts anew)."""

    def start(**keywords):
        ray.shutdown()
        if backend == "ray":
            keywords.setdefault("include_dashboard", False)
        ray.init(num_cpus=2, **keywords)

    yield start
    ray.shutdown()


def _counter(ray):
    @ray.remote
    class Counter:
        def __init__(self, start=0):
            self.n = start

        def value(self):
            return self.n

        def namespace(self):
            return ray.get_runtime_context().namespace

        def lookup(self, name):
            return ray.get(ray.get_actor(name).value.remote())

    return Counter


def _missing(ray, name, namespace=None):
    """Whether ``get_actor`` finds no actor named ``name`` (Ray's ValueError)."""
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


def test_the_same_name_may_be_taken_once_in_each_namespace(ray):
    Counter = _counter(ray)
    first = Counter.options(name="twin", namespace="space-one").remote(1)
    second = Counter.options(name="twin", namespace="space-two").remote(2)
    try:
        got = [ray.get_actor("twin", namespace=ns) for ns in ("space-one", "space-two")]
        assert ray.get([h.value.remote() for h in got], timeout=HANG) == [1, 2]
        assert _missing(ray, "twin")  # not in the driver's own (anonymous) namespace
        assert "twin" not in ray.util.list_named_actors()
        everywhere = ray.util.list_named_actors(all_namespaces=True)
        assert {"name": "twin", "namespace": "space-one"} in everywhere
        assert {"name": "twin", "namespace": "space-two"} in everywhere
        with pytest.raises(ray.exceptions.ActorAlreadyExistsError) as taken:
            Counter.options(name="twin", namespace="space-one").remote()
        assert str(taken.value).startswith(
            "The name twin (namespace=space-one) is already taken. Please use a different name"
        )
        assert isinstance(taken.value, ValueError)
        again = Counter.options(name="twin", namespace="space-two", get_if_exists=True).remote()
        assert ray.get(again.value.remote(), timeout=HANG) == 2
    finally:
        ray.kill(first)
        ray.kill(second)
    wait_until(lambda: _missing(ray, "twin", "space-one"), "the killed actor's name is free", HANG)


def test_a_name_taken_in_the_drivers_own_namespace_says_namespace_none(ray):
    Counter = _counter(ray)
    one = Counter.options(name="only-one").remote()
    try:
        with pytest.raises(ray.exceptions.ActorAlreadyExistsError) as taken:
            Counter.options(name="only-one").remote()
        assert str(taken.value) == (
            "The name only-one (namespace=None) is already taken. Please use a different name "
            "or get the existing actor using ray.get_actor('only-one', namespace='None')"
        )
        assert "only-one" in ray.util.list_named_actors()
    finally:
        ray.kill(one)


def test_get_actor_and_the_namespace_option_check_what_they_are_given(ray):
    Counter = _counter(ray)
    with pytest.raises(ValueError, match="Please supply a non-empty value to get_actor"):
        ray.get_actor("")
    with pytest.raises(TypeError):
        ray.get_actor(3)
    with pytest.raises(ValueError, match='"" is not a valid namespace. Pass None'):
        ray.get_actor("x", namespace="")
    with pytest.raises(TypeError, match="namespace must be None or a string."):
        ray.get_actor("x", namespace=3)
    with pytest.raises(ValueError, match='"" is not a valid namespace. Pass None'):
        Counter.options(name="y", namespace="").remote()
    with pytest.raises(TypeError, match="The type of keyword 'namespace' must be"):
        Counter.options(name="y", namespace=3).remote()
    for namespace in (None, "nowhere"):
        with pytest.raises(ValueError) as missing:
            ray.get_actor("never-made", namespace=namespace)
        assert str(missing.value).startswith(
            "Failed to look up actor with name 'never-made'. This could because 1. You are "
            "trying to look up a named actor you didn't create."
        )


def test_init_checks_the_namespace_it_is_given(ray):
    ray.shutdown()
    with pytest.raises(TypeError, match="namespace must be None or a string."):
        ray.init(num_cpus=1, namespace=3)
    assert not ray.is_initialized()
    with pytest.raises(ValueError, match='"" is not a valid namespace'):
        ray.init(num_cpus=1, namespace="")
    assert not ray.is_initialized()


def test_tasks_and_actors_run_in_the_namespace_of_the_driver_that_called_them(ray, reinit):
    reinit(namespace="parity-job")
    Counter = _counter(ray)

    @ray.remote
    def inside():
        named = ray.get(ray.get_actor("in-job").value.remote())
        return ray.get_runtime_context().namespace, named, ray.util.list_named_actors()

    @ray.remote
    def create_named():
        handle = Counter.options(name="made-in-task", lifetime="detached").remote(7)
        return ray.get(handle.value.remote())

    assert ray.get_runtime_context().namespace == "parity-job"
    in_job = Counter.options(name="in-job").remote(5)
    # Registered in another namespace: the actor still runs in its creator's job.
    elsewhere = Counter.options(name="elsewhere", namespace="parity-other").remote(6)
    namespace, named, listed = ray.get(inside.remote(), timeout=HANG)
    assert (namespace, named, sorted(listed)) == ("parity-job", 5, ["in-job"])
    assert ray.get(elsewhere.namespace.remote(), timeout=HANG) == "parity-job"
    assert ray.get(elsewhere.lookup.remote("in-job"), timeout=HANG) == 5
    # A named actor created inside a task is in the driver's namespace.
    assert ray.get(create_named.remote(), timeout=HANG) == 7
    made = ray.get_actor("made-in-task")
    assert ray.get(made.value.remote(), timeout=HANG) == 7
    assert sorted(ray.util.list_named_actors()) == ["in-job", "made-in-task"]
    for handle in (in_job, elsewhere, made):
        ray.kill(handle)


_OTHER_DRIVER = """
import sys
import {backend} as ray

ray.init(address="auto", namespace={namespace!r})

@ray.remote
class Keeper:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value

    def namespace(self):
        return ray.get_runtime_context().namespace

if sys.argv[1] == "create":
    keeper = Keeper.options(name="keeper", lifetime="detached").remote("kept")
    print(ray.get(keeper.namespace.remote(), timeout=60))
else:
    print(sorted(ray.util.list_named_actors()))
ray.shutdown()
"""


def _other_driver(ray, backend, namespace, *args):
    """Run a second driver (its own process) on the same cluster, in ``namespace``; its last
    printed line."""
    if backend == "ray":
        # "auto" may find an earlier local cluster of this session (Ray's lookup file)
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    else:
        address = ray.get_client().scheduler_info()["address"]  # tcp://, not inproc://
        env = {**os.environ, "DASKGEN_ADDRESS": address}
    script = textwrap.dedent(_OTHER_DRIVER.format(backend=backend, namespace=namespace))
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=HANG * 3,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_detached_actor_keeps_its_namespace_after_its_driver_has_gone(ray, backend):
    assert _other_driver(ray, backend, "keepers", "create") == "keepers"
    try:
        assert _missing(ray, "keeper")  # this driver's namespace is another
        keeper = ray.get_actor("keeper", namespace="keepers")
        assert ray.get(keeper.get.remote(), timeout=HANG) == "kept"
        assert {"name": "keeper", "namespace": "keepers"} in ray.util.list_named_actors(
            all_namespaces=True
        )
        # Another driver in that namespace sees it by name alone; one in another does not.
        assert _other_driver(ray, backend, "keepers", "list") == "['keeper']"
        assert _other_driver(ray, backend, "strangers", "list") == "[]"
    finally:
        ray.kill(ray.get_actor("keeper", namespace="keepers"))
    wait_until(lambda: _missing(ray, "keeper", "keepers"), "the killed actor's name is free", HANG)


@pytest.mark.daskgen_only
def test_a_detached_actor_in_an_anonymous_namespace_logs_how_to_find_it_again(ray, caplog):
    Counter = _counter(ray)
    namespace = ray.get_runtime_context().namespace
    with caplog.at_level("WARNING", logger="daskgen"):
        lone = Counter.options(name="lone", lifetime="detached").remote()
    try:
        assert f'init(namespace="{namespace}", ...)' in caplog.text
        assert "detached actor in an anonymous namespace" in caplog.text
    finally:
        ray.kill(lone)
