"""Progress bars, output forwarding, the runtime context and the dashboard link."""

from __future__ import annotations

import logging
import time

import pytest

pytestmark = pytest.mark.daskgen_only


def _wait_for_output(capsys, needle: str, timeout: float = 30) -> str:
    # Forwarded lines arrive asynchronously on the client's event loop: bounded wait for them.
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out, err = capsys.readouterr()
        seen += out + err
        if needle in seen:
            return seen
        time.sleep(0.02)
    return seen


def test_print_in_a_task_shows_in_the_driver_prefixed_with_function_and_worker(ray, capsys):
    @ray.remote
    def chatty():
        print("hello from inside chatty")
        return 1

    assert ray.get(chatty.remote(), timeout=60) == 1
    seen = _wait_for_output(capsys, "hello from inside chatty")
    line = next(ln for ln in seen.splitlines() if "hello from inside chatty" in ln)
    assert line.startswith("(chatty pid=") and "worker=tcp://" in line


def test_logging_in_a_task_shows_in_the_driver(ray, capsys):
    @ray.remote
    def warns():
        logging.getLogger("user.code").warning("careful: %s", 42)

    ray.get(warns.remote(), timeout=60)
    seen = _wait_for_output(capsys, "careful: 42")
    assert "(warns pid=" in seen and "WARNING user.code: careful: 42" in seen


def test_print_in_an_actor_method_shows_in_the_driver(ray, capsys):
    @ray.remote
    class Talker:
        def talk(self):
            print("actor says hi")

    ray.get(Talker.remote().talk.remote(), timeout=60)
    seen = _wait_for_output(capsys, "actor says hi")
    assert "(Talker.talk pid=" in seen


def test_print_in_tasks_submitted_from_a_task_or_an_actor_shows_in_the_driver(ray, capsys):
    @ray.remote
    def inner(tag):
        print(f"nested hello {tag}")
        return tag

    @ray.remote
    def outer():
        return ray.get(inner.remote("from-a-task"))

    @ray.remote
    class Submitter:
        def submit(self):
            return ray.get(inner.remote("from-an-actor"))

    assert ray.get(outer.remote(), timeout=60) == "from-a-task"
    assert ray.get(Submitter.remote().submit.remote(), timeout=60) == "from-an-actor"
    seen = _wait_for_output(capsys, "nested hello from-a-task")
    if "nested hello from-an-actor" not in seen:
        seen += _wait_for_output(capsys, "nested hello from-an-actor")
    for tag in ("from-a-task", "from-an-actor"):
        line = next(ln for ln in seen.splitlines() if f"nested hello {tag}" in ln)
        assert line.startswith("(inner pid=") and "worker=tcp://" in line


def test_runtime_context_in_a_task_gives_its_key_and_worker(ray):
    @ray.remote
    def where():
        ctx = ray.get_runtime_context()
        return ctx.get_task_id(), ctx.get_node_id(), ctx.get_actor_id()

    ref = where.remote()
    task_id, node_id, actor_id = ray.get(ref, timeout=60)
    assert task_id == ref.key
    assert node_id.startswith("tcp://")
    assert actor_id is None


def test_runtime_context_in_an_actor_gives_the_actor_id(ray):
    @ray.remote
    class Who:
        def ids(self):
            ctx = ray.get_runtime_context()
            return ctx.get_actor_id(), ctx.get_task_id()

    actor = Who.remote()
    ref = actor.ids.remote()
    actor_id, task_id = ray.get(ref, timeout=60)
    assert actor_id == actor._actor_id
    assert task_id == ref.key


def test_runtime_context_in_the_driver_has_no_task(ray):
    assert ray.get_runtime_context().get_task_id() is None


def test_progress_over_refs_completes_and_prints_a_bar(ray, capsys):
    @ray.remote
    def square(x):
        return x * x

    refs = [square.remote(i) for i in range(5)]
    ray.progress(refs)
    assert ray.get(refs, timeout=60) == [0, 1, 4, 9, 16]
    assert "100% Completed" in _wait_for_output(capsys, "100% Completed")


def test_progress_over_a_stream_yields_every_ref_and_counts_them(ray, capsys):
    @ray.remote
    def numbers(n):
        yield from range(n)

    values = [ray.get(r, timeout=60) for r in ray.progress(numbers.remote(4))]
    assert values == [0, 1, 2, 3]
    # tqdm's bar when it is installed, else a plain "numbers: 4 items, done" line
    seen = _wait_for_output(capsys, "numbers")
    assert "numbers" in seen and "4" in seen


def test_progress_rejects_what_it_cannot_follow(ray):
    with pytest.raises(TypeError, match="progress"):
        ray.progress(42)


def test_the_client_has_a_dashboard_link(ray):
    assert ray.get_client().dashboard_link.startswith("http")
