"""Bad input gets a clear error at the call that made it, and disturbs nothing else (SPEC 2-5).

One table: each case makes one mistake and names what it expects (an exception or a warning,
and a pattern its message must match). After each case a task and a generator still run on the
same cluster.

daskgen only: the messages checked are daskgen's (Ray words several of them differently).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import pytest

pytestmark = [
    pytest.mark.daskgen_only,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # num_returns="dynamic"
]

HANG = 60  # seconds: a generous bound that only catches hangs


def _identity(ray):
    @ray.remote
    def identity(x=None):
        return x

    return identity


def _empty_generator(ray, **options):
    def empty():
        return
        yield  # a generator function that never yields

    return ray.remote(**options)(empty) if options else ray.remote(empty)


# --- the cases: each makes one mistake ---------------------------------------------------------


def unpicklable_positional_argument(ray):
    _identity(ray).remote(threading.Lock())


def unpicklable_keyword_argument(ray):
    _identity(ray).remote(x=threading.Lock())


def unpicklable_yielded_value(ray):
    @ray.remote
    def yields_a_lock():
        import threading

        yield 1
        yield 2
        yield threading.Lock()

    stream = yields_a_lock.remote()
    refs = [stream._next_sync(HANG) for _ in range(3)]
    assert ray.get(refs[:2], timeout=HANG) == [1, 2]  # the earlier yields stay readable
    ray.get(refs[2], timeout=HANG)


def static_generator_that_never_yields(ray):
    refs = _empty_generator(ray, num_returns=2).remote()
    ray.get(refs[0], timeout=HANG)


def streaming_generator_that_never_yields(ray):
    _empty_generator(ray).remote()._next_sync(HANG)


def dynamic_generator_that_never_yields(ray):
    outer = _empty_generator(ray, num_returns="dynamic").remote()
    next(iter(ray.get(outer, timeout=HANG)))


def num_returns_a_word_at_decoration(ray):
    ray.remote(num_returns="two")(lambda: (1, 2))


def num_returns_a_float_in_options(ray):
    _identity(ray).options(num_returns=1.5)


def num_returns_a_bool_at_decoration(ray):
    ray.remote(num_returns=True)(lambda: 1)


def num_returns_negative_at_decoration(ray):
    ray.remote(num_returns=-1)(lambda: 1)


def num_returns_negative_in_options(ray):
    _identity(ray).options(num_returns=-2)


def num_returns_dynamic_on_a_plain_function(ray):
    ray.remote(num_returns="dynamic")(lambda: 1)


def unknown_option(ray):
    _identity(ray).options(num_cpu=1)


def max_retries_a_string(ray):
    _identity(ray).options(max_retries="3")


def backpressure_zero(ray):
    def gen():
        yield 1

    ray.remote(_generator_backpressure_num_objects=0)(gen)


def calling_a_remote_function_directly(ray):
    _identity(ray)(1)


def get_on_an_int(ray):
    ray.get(42, timeout=HANG)


def get_on_a_list_holding_an_int(ray):
    ray.get([ray.put(1), 42], timeout=HANG)


def get_on_a_list_holding_a_streaming_generator(ray):
    # (get of the generator itself returns it, as in Ray: tests/parity/test_call_semantics.py)
    def gen():
        yield 1

    ray.get([ray.remote(gen).remote()], timeout=HANG)


def get_with_a_negative_timeout(ray):
    ray.get(ray.put(1), timeout=-1)


def get_with_a_nan_timeout(ray):
    ray.get(ray.put(1), timeout=float("nan"))


def get_with_a_string_timeout(ray):
    ray.get(ray.put(1), timeout="1")


def wait_with_a_negative_timeout(ray):
    ray.wait([ray.put(1)], timeout=-1)


def wait_with_a_string_timeout(ray):
    ray.wait([ray.put(1)], timeout="soon")


def wait_on_duplicates(ray):
    ref = ray.put(1)
    ray.wait([ref, ref], timeout=HANG)


def wait_on_a_single_ref_not_in_a_list(ray):
    ray.wait(ray.put(1), timeout=HANG)


def wait_for_more_than_given(ray):
    ray.wait([ray.put(1)], num_returns=2, timeout=HANG)


def put_of_a_ref(ray):
    ray.put(ray.put(1))


def task_asking_for_a_resource_no_worker_has(ray):
    name = f"no_such_resource_{uuid.uuid4().hex[:8]}"
    f = _identity(ray).options(resources={name: 1})
    _Leftover.refs.append(f.remote(name))


class _Leftover:
    """Refs a case leaves behind that must be cancelled (a task that can never run)."""

    refs: list = []


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raises:
    error: type | tuple[type, ...]
    match: str | None

    def context(self):
        return pytest.raises(self.error, match=self.match)


@dataclass(frozen=True)
class Warns:
    warning: type[Warning]
    match: str | None

    def context(self):
        return pytest.warns(self.warning, match=self.match)


NOT_A_REF = (TypeError, ValueError)  # Ray raises ValueError for a non-list, TypeError inside one
SERIALIZATION = r"(?i)pickl|serializ"

CASES = [
    (unpicklable_positional_argument, Raises(TypeError, r"argument 0\b.*identity\.remote\(\)")),
    (unpicklable_keyword_argument, Raises(TypeError, r"keyword argument 'x'.*identity")),
    (unpicklable_yielded_value, Raises(TypeError, SERIALIZATION)),
    (static_generator_that_never_yields, Raises(ValueError, r"returned 0 objects.*num_returns=2")),
    (streaming_generator_that_never_yields, Raises(StopIteration, None)),
    (dynamic_generator_that_never_yields, Raises(StopIteration, None)),
    (num_returns_a_word_at_decoration, Raises(ValueError, r"num_returns.*'two'")),
    (num_returns_a_float_in_options, Raises(TypeError, r"num_returns.*1\.5")),
    (num_returns_a_bool_at_decoration, Raises(TypeError, r"num_returns.*True")),
    (num_returns_negative_at_decoration, Raises(ValueError, r"num_returns.*-1")),
    (num_returns_negative_in_options, Raises(ValueError, r"num_returns.*-2")),
    (num_returns_dynamic_on_a_plain_function, Raises(ValueError, r"dynamic.*generator")),
    (unknown_option, Raises(ValueError, r"Invalid option keyword num_cpu")),
    (max_retries_a_string, Raises(TypeError, r"max_retries")),
    (backpressure_zero, Raises(ValueError, r"_generator_backpressure_num_objects")),
    (calling_a_remote_function_directly, Raises(TypeError, r"cannot be called directly.*remote")),
    (get_on_an_int, Raises(NOT_A_REF, r"ObjectRef")),
    (get_on_a_list_holding_an_int, Raises(NOT_A_REF, r"\b42\b.*not an ObjectRef")),
    (get_on_a_list_holding_a_streaming_generator, Raises(NOT_A_REF, r"ObjectRefGenerator")),
    (get_with_a_negative_timeout, Raises(ValueError, r"timeout.*-1")),
    (get_with_a_nan_timeout, Raises(ValueError, r"timeout.*nan")),
    (get_with_a_string_timeout, Raises(TypeError, r"timeout.*'1'")),
    (wait_with_a_negative_timeout, Raises(ValueError, r"timeout.*-1")),
    (wait_with_a_string_timeout, Raises(TypeError, r"timeout.*'soon'")),
    (wait_on_duplicates, Raises(ValueError, r"unique")),
    (wait_on_a_single_ref_not_in_a_list, Raises(TypeError, r"list")),
    (wait_for_more_than_given, Raises(ValueError, r"num_returns.*2.*1")),
    (put_of_a_ref, Raises(TypeError, r"'put' on an ObjectRef")),
    (task_asking_for_a_resource_no_worker_has, Warns(UserWarning, r"no_such_resource_\w+")),
]


@pytest.mark.parametrize("mistake, expected", [pytest.param(m, e, id=m.__name__) for m, e in CASES])
def test_a_mistake_gets_a_clear_error_at_its_call_and_the_cluster_keeps_working(
    ray, mistake, expected
):
    try:
        with expected.context():
            mistake(ray)
    finally:
        for ref in _Leftover.refs:
            ray.cancel(ref)
        _Leftover.refs.clear()

    assert ray.get(_identity(ray).remote("still runs"), timeout=HANG) == "still runs"

    @ray.remote
    def count(n):
        yield from range(n)

    assert ray.get(list(count.remote(3)), timeout=HANG) == [0, 1, 2]


def test_a_task_waiting_for_a_missing_resource_does_not_run_and_says_so_on_get(ray):
    # The task the resource case leaves behind waits visibly: get times out, it never hangs.
    name = f"no_such_resource_{uuid.uuid4().hex[:8]}"
    with pytest.warns(UserWarning, match=name):
        ref = _identity(ray).options(resources={name: 1}).remote(1)
    try:
        with pytest.raises(ray.exceptions.GetTimeoutError):
            ray.get(ref, timeout=0.5)
    finally:
        ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=HANG)
