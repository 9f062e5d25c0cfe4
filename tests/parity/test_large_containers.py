"""Large builtin containers (lists, tuples, dicts, sets too big to travel inline) as results,
yields and actor results: the driver and other tasks get them whole, of the same type, as in
Ray; a task that changes the value it was given as a ref does not change the stored value (a
NumPy array comes read-only)."""

from __future__ import annotations

import numpy as np
import pytest

HANG = 120  # seconds: a generous bound that only catches hangs

N = 200_000


def _maker():
    def make(kind, n):
        if kind == "list":
            return list(range(n))
        if kind == "tuple":
            return tuple(range(n))
        if kind == "dict":
            return {i: -i for i in range(n)}
        return set(range(n))

    return make


@pytest.mark.parametrize("kind", ["list", "tuple", "dict", "set"])
def test_a_large_container_result_reaches_the_driver_and_a_task_whole(ray, kind):
    make = ray.remote(_maker())

    @ray.remote
    def describe(value):
        items = value.values() if isinstance(value, dict) else value
        return type(value).__name__, len(value), sum(items)

    ref = make.remote(kind, N)
    value = ray.get(ref, timeout=HANG)
    assert value == _maker()(kind, N) and type(value).__name__ == kind
    items = value.values() if kind == "dict" else value
    assert ray.get(describe.remote(ref), timeout=HANG) == (kind, N, sum(items))


def test_large_lists_yielded_and_returned_by_an_actor_come_whole(ray):
    @ray.remote
    def gen(n):
        for i in range(n):
            yield [i] * N

    @ray.remote
    class Holder:
        def big(self):
            return list(range(N))

    @ray.remote
    def first_and_len(xs):
        return xs[0], len(xs)

    refs = list(gen.remote(3))
    assert [ray.get(r, timeout=HANG)[:2] for r in refs] == [[0, 0], [1, 1], [2, 2]]
    assert ray.get([first_and_len.remote(r) for r in refs], timeout=HANG) == [
        (0, N),
        (1, N),
        (2, N),
    ]
    holder = Holder.remote()
    big = holder.big.remote()
    assert ray.get(big, timeout=HANG) == list(range(N))
    assert ray.get(first_and_len.remote(big), timeout=HANG) == (0, N)


def test_a_task_changing_the_list_it_got_leaves_the_stored_value_alone(ray):
    @ray.remote
    def make():
        return list(range(N))

    @ray.remote
    def change(xs):
        xs[0] = -1
        xs.append(7)
        return xs[0], len(xs)

    ref = make.remote()
    for _ in range(3):  # each task its own copy, wherever it runs
        assert ray.get(change.remote(ref), timeout=HANG) == (-1, N + 1)
    value = ray.get(ref, timeout=HANG)
    assert value[0] == 0 and len(value) == N


def test_an_array_given_as_a_ref_is_read_only_in_the_task(ray):
    @ray.remote
    def try_write(a):
        try:
            a[0] = -1
        except ValueError as exc:
            return "read-only" if "read-only" in str(exc) else str(exc)
        return "written"

    ref = ray.put(np.arange(1_000_000))
    assert ray.get(try_write.remote(ref), timeout=HANG) == "read-only"
    assert ray.get(ref, timeout=HANG)[0] == 0


def test_a_large_argument_by_value_is_the_value_at_the_call(ray):
    @ray.remote
    def ends(x):
        return int(x[0]), int(x[-1])

    a = np.arange(500_000)  # 4 MB
    ref = ends.remote(a)
    a[0] = -1  # after the call
    assert ray.get(ref, timeout=HANG) == (0, 499_999)
