"""Arguments passed by value, small and large (a large one is stored apart from the task on
daskgen, as on Ray): the task gets the value at the call, a NumPy array read-only, any other
value as its own copy, from the driver and from inside a task, for every kind of call."""

from __future__ import annotations

import numpy as np
import pytest

HANG = 120  # seconds: a generous bound that only catches hangs

N = 300_000  # a list of this many ints pickles to over 1 MiB


@pytest.mark.parametrize("n", [10, 100_000, 500_000])
def test_an_array_passed_by_value_is_read_only_in_the_task(ray, n):
    @ray.remote
    def try_write(a):
        try:
            a[0] = -1
        except ValueError as exc:
            return "read-only" if "read-only" in str(exc) else str(exc), float(a[0])
        return "written", float(a[0])

    a = np.zeros(n)
    assert ray.get(try_write.remote(a), timeout=HANG) == ("read-only", 0.0)
    assert a[0] == 0.0


def test_a_large_list_by_value_is_the_tasks_own_copy(ray):
    @ray.remote
    def grow(xs):
        xs.append(-1)
        return len(xs), xs[-1]

    xs = list(range(N))
    assert ray.get([grow.remote(xs) for _ in range(3)], timeout=HANG) == [(N + 1, -1)] * 3
    assert len(xs) == N


def test_a_child_task_gets_its_parents_large_list_by_value(ray):
    @ray.remote
    def child(xs):
        xs.append(-1)
        return len(xs)

    @ray.remote
    def parent(n):
        xs = list(range(n))
        lengths = ray.get([child.remote(xs) for _ in range(2)])
        return lengths, len(xs), xs[-1]

    assert ray.get(parent.remote(N), timeout=HANG) == ([N + 1, N + 1], N, N - 1)


def test_several_large_arrays_positional_and_keyword(ray):
    @ray.remote
    def sums(a, b, *, c, scale=1):
        return float(a.sum()), float(b.sum()), float(c.sum()) * scale

    a, b, c = np.ones(300_000), np.full(200_000, 2.0), np.arange(150_000, dtype=np.int64)
    got = ray.get(sums.remote(a, b, c=c, scale=2), timeout=HANG)
    assert got == (300_000.0, 400_000.0, float(c.sum()) * 2)


def test_a_generator_and_an_actor_method_take_large_arguments(ray):
    @ray.remote
    def pieces(a, k):
        for i in range(k):
            yield float(a[i])

    @ray.remote
    class Summer:
        def __init__(self, base):
            self.base = float(base.sum())

        def add(self, a):
            return self.base + float(a.sum())

    a = np.arange(400_000, dtype=np.float64)
    assert [ray.get(r, timeout=HANG) for r in pieces.remote(a, 3)] == [0.0, 1.0, 2.0]
    summer = Summer.remote(np.ones(300_000))
    assert ray.get(summer.add.remote(np.ones(200_000)), timeout=HANG) == 500_000.0
