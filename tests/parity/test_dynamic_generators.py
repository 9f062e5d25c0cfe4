"""Generator functions called with ``num_returns="dynamic"`` (SPEC section 4, dynamic part).

One ref that resolves to a ``DynamicObjectRefGenerator`` holding one ref per yield. Ray 2.60 warns
that "dynamic" is deprecated (a ``RayDeprecationWarning``, a ``DeprecationWarning`` subclass); the
warning is allowed here and silenced, except in the test that checks its category.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from generators_shared import counting_generator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _dynamic_generator(ray):
    return counting_generator(ray, num_returns="dynamic")


def test_dynamic_num_returns_gives_one_ref_resolving_to_a_dynamic_object_ref_generator(ray):
    count, _ = _dynamic_generator(ray)

    dynamic_ref = count.remote(3)

    assert isinstance(dynamic_ref, ray.ObjectRef)
    ref_generator = ray.get(dynamic_ref, timeout=60)
    assert type(ref_generator).__name__ == "DynamicObjectRefGenerator"
    assert isinstance(ref_generator, ray.DynamicObjectRefGenerator)


def test_dynamic_num_returns_can_be_set_with_options(ray):
    @ray.remote
    def count(n):
        yield from range(n)

    dynamic_ref = count.options(num_returns="dynamic").remote(2)

    assert ray.get(list(ray.get(dynamic_ref, timeout=60)), timeout=60) == [0, 1]


def test_iterating_the_dynamic_generator_yields_refs_to_the_values_in_order(ray):
    count, _ = _dynamic_generator(ray)

    refs = list(ray.get(count.remote(4), timeout=60))

    assert all(isinstance(ref, ray.ObjectRef) for ref in refs)
    assert ray.get(refs, timeout=60) == [0, 10, 20, 30]


def test_len_of_the_dynamic_generator_is_the_number_of_yields(ray):
    count, _ = _dynamic_generator(ray)

    ref_generator = ray.get(count.remote(5), timeout=60)

    assert len(ref_generator) == 5


def test_the_dynamic_generator_is_single_pass(ray):
    count, _ = _dynamic_generator(ray)
    ref_generator = ray.get(count.remote(3), timeout=60)

    first_pass = list(ref_generator)
    second_pass = list(ref_generator)

    assert len(first_pass) == 3
    assert second_pass == []


def test_len_counts_only_the_refs_not_yet_iterated(ray):
    # Ray's DynamicObjectRefGenerator pops refs off a deque as it is iterated.
    count, _ = _dynamic_generator(ray)
    ref_generator = ray.get(count.remote(3), timeout=60)
    iterator = iter(ref_generator)

    next(iterator)

    assert len(ref_generator) == 2
    list(iterator)
    assert len(ref_generator) == 0


def test_each_get_of_the_outer_ref_gives_a_fresh_full_generator(ray):
    count, _ = _dynamic_generator(ray)
    dynamic_ref = count.remote(3)

    list(ray.get(dynamic_ref, timeout=60))
    again = ray.get(dynamic_ref, timeout=60)

    assert len(again) == 3
    assert ray.get(list(again), timeout=60) == [0, 10, 20]


def test_the_dynamic_generator_survives_a_pickle_round_trip(ray):
    count, _ = _dynamic_generator(ray)
    ref_generator = ray.get(count.remote(3), timeout=60)

    restored = pickle.loads(pickle.dumps(ref_generator))

    assert type(restored).__name__ == "DynamicObjectRefGenerator"
    assert len(restored) == 3
    assert ray.get(list(restored), timeout=60) == [0, 10, 20]


def test_a_generator_with_zero_yields_gives_an_empty_dynamic_generator(ray):
    count, _ = _dynamic_generator(ray)

    ref_generator = ray.get(count.remote(0), timeout=60)

    assert len(ref_generator) == 0
    assert list(ref_generator) == []


def test_dynamic_num_returns_on_a_plain_function_raises_value_error_at_decoration(ray):
    def plain():
        return 1

    with pytest.raises(ValueError, match="generator"):
        ray.remote(num_returns="dynamic")(plain)


def test_dynamic_num_returns_on_a_plain_function_raises_value_error_in_options(ray):
    @ray.remote
    def plain():
        return 1

    with pytest.raises(ValueError, match="generator"):
        plain.options(num_returns="dynamic")


def test_dynamic_num_returns_warns_only_with_a_deprecation_warning(ray):
    @ray.remote
    def count(n):
        yield from range(n)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dynamic_ref = count.options(num_returns="dynamic").remote(2)
        values = ray.get(list(ray.get(dynamic_ref, timeout=60)), timeout=60)

    assert values == [0, 1]
    about_dynamic = [w for w in caught if "dynamic" in str(w.message)]
    assert all(issubclass(w.category, DeprecationWarning) for w in about_dynamic), [
        (w.category, str(w.message)) for w in about_dynamic
    ]


def test_an_exception_after_k_yields_gives_k_value_refs_plus_one_final_ref(ray):
    count, _ = _dynamic_generator(ray)

    ref_generator = ray.get(count.remote(5, fail_at=2), timeout=60)

    assert len(ref_generator) == 3
    refs = list(ref_generator)
    assert ray.get(refs[:2], timeout=60) == [0, 10]


def test_the_final_ref_after_an_exception_raises_the_users_exception(ray):
    count, boom = _dynamic_generator(ray)

    *_, last = ray.get(count.remote(5, fail_at=2), timeout=60)

    with pytest.raises(boom, match="boom at 2") as info:
        ray.get(last, timeout=60)
    assert isinstance(info.value, ray.exceptions.RayTaskError)


def test_the_seed_exception_example_stores_the_error_in_the_final_ref(ray):
    @ray.remote
    def generator():
        for i in range(2):  # noqa: UP028 - the seed's code
            yield i
        raise Exception("error")

    dynamic_ref = generator.options(num_returns="dynamic").remote()
    ref_generator = ray.get(dynamic_ref, timeout=60)
    ref1, ref2, ref3 = ref_generator

    assert ray.get([ref1, ref2], timeout=60) == [0, 1]
    with pytest.raises(Exception, match="error"):
        ray.get(ref3, timeout=60)


def _split_and_get_size(ray):
    """The seed's ``split`` and ``get_size`` tasks."""
    block_size = 1000

    @ray.remote(num_returns="dynamic")
    def split(array, chunk_size):
        while len(array) > 0:
            yield array[:chunk_size]
            array = array[chunk_size:]

    @ray.remote
    def get_size(ref_generator):
        num_elements = 0
        for ref in ref_generator:
            array = ray.get(ref)
            assert len(array) <= block_size
            num_elements += len(array)
        return num_elements

    return split, get_size, block_size


def test_the_seed_split_example_splits_an_array_into_blocks(ray):
    split, _, block_size = _split_and_get_size(ray)
    array_ref = ray.put(np.zeros(63_153))

    dynamic_ref = split.remote(array_ref, block_size)

    i = -1
    ref_generator = ray.get(dynamic_ref, timeout=60)
    for i, ref in enumerate(ref_generator):  # noqa: B007 - the seed's code
        assert len(ray.get(ref, timeout=60)) <= block_size
    num_blocks_generated = i + 1
    array_size = len(ray.get(array_ref, timeout=60))
    assert array_size <= num_blocks_generated * block_size
    assert num_blocks_generated == 64


def test_the_split_blocks_concatenate_back_to_the_original_array(ray):
    split, _, block_size = _split_and_get_size(ray)
    original = np.arange(10_500, dtype=np.int64)

    ref_generator = ray.get(split.remote(ray.put(original), block_size), timeout=60)
    blocks = ray.get(list(ref_generator), timeout=60)

    assert [len(block) for block in blocks] == [1000] * 10 + [500]
    np.testing.assert_array_equal(np.concatenate(blocks), original)


def test_passing_the_outer_ref_to_a_task_gives_it_the_dynamic_generator(ray):
    split, get_size, block_size = _split_and_get_size(ray)
    array_ref = ray.put(np.zeros(12_345))

    dynamic_ref = split.remote(array_ref, block_size)

    assert ray.get(get_size.remote(dynamic_ref), timeout=60) == 12_345


def test_passing_the_dynamic_generator_itself_to_a_task_works(ray):
    split, get_size, block_size = _split_and_get_size(ray)
    array_ref = ray.put(np.zeros(12_345))
    ref_generator = ray.get(split.remote(array_ref, block_size), timeout=60)

    assert ray.get(get_size.remote(ref_generator), timeout=60) == 12_345


def test_a_task_receiving_the_outer_ref_sees_a_dynamic_object_ref_generator(ray):
    count, _ = _dynamic_generator(ray)

    @ray.remote
    def describe(ref_generator):
        return type(ref_generator).__name__, len(ref_generator)

    assert ray.get(describe.remote(count.remote(4)), timeout=60) == (
        "DynamicObjectRefGenerator",
        4,
    )
