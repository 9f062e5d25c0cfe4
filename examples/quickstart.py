"""The examples of Ray's "Dynamic generators" page, run unchanged on Dask with daskgen.

    python examples/quickstart.py

Starts an embedded Dask cluster (no cluster needed), runs each example of the page and prints
what it computes. The only line that differs from the Ray page is the import.
"""

import numpy as np

import daskgen as ray

# -- num_returns set by the task caller ---------------------------------------------------------
SIZE = 100_000_000  # 100 MB int8 arrays, as on the page


@ray.remote
def large_values(num_returns):
    return [
        np.random.randint(np.iinfo(np.int8).max, size=(SIZE, 1), dtype=np.int8)
        for _ in range(num_returns)
    ]


@ray.remote
def large_values_generator(num_returns):
    for i in range(num_returns):
        yield np.random.randint(np.iinfo(np.int8).max, size=(SIZE, 1), dtype=np.int8)
        print(f"yielded return value {i}")


@ray.remote
def shape_of(array):  # looked at where the array lives: 100 MB need not travel to the driver
    return array.shape


refs = large_values.options(num_returns=3).remote(3)
print("list version:", ray.get([shape_of.remote(r) for r in refs]))
refs = large_values_generator.options(num_returns=3).remote(3)
print("generator version:", ray.get([shape_of.remote(r) for r in refs]))
del refs


# -- num_returns set by the task executor -------------------------------------------------------
@ray.remote(num_returns="dynamic")
def split(array, chunk_size):
    while len(array) > 0:
        yield array[:chunk_size]
        array = array[chunk_size:]


array_ref = ray.put(np.zeros(np.random.randint(1000_000)))
block_size = 1000

# Returns an ObjectRef[DynamicObjectRefGenerator].
dynamic_ref = split.remote(array_ref, block_size)
print(dynamic_ref)

i = -1
ref_generator = ray.get(dynamic_ref)
print(ref_generator)
for i, ref in enumerate(ref_generator):
    # Each DynamicObjectRefGenerator iteration returns an ObjectRef.
    assert len(ray.get(ref)) <= block_size
num_blocks_generated = i + 1
array_size = len(ray.get(array_ref))
assert array_size <= num_blocks_generated * block_size
print(
    f"Split array of size {array_size} into {num_blocks_generated} blocks of "
    f"size {block_size} each."
)

# NOTE: The dynamic_ref points to the generated ObjectRefs. Make sure that this
# ObjectRef goes out of scope so that Ray can garbage-collect the internal
# ObjectRefs.
del dynamic_ref


@ray.remote
def get_size(ref_generator: ray.DynamicObjectRefGenerator):
    print(ref_generator)
    num_elements = 0
    for ref in ref_generator:
        array = ray.get(ref)
        assert len(array) <= block_size
        num_elements += len(array)
    return num_elements


# Returns an ObjectRef[DynamicObjectRefGenerator].
dynamic_ref = split.remote(array_ref, block_size)
assert array_size == ray.get(get_size.remote(dynamic_ref))
print(f"get_size of the dynamic ref: {array_size}")

# This also works, but should be avoided because you have to call an additional
# `ray.get`, which blocks the driver.
ref_generator = ray.get(dynamic_ref)
assert array_size == ray.get(get_size.remote(ref_generator))
print(f"get_size of the generator itself: {array_size}")


# -- Exception handling -------------------------------------------------------------------------
@ray.remote
def generator():
    for i in range(2):
        yield i
    raise Exception("error")


ref1, ref2, ref3, ref4 = generator.options(num_returns=4).remote()
assert ray.get([ref1, ref2]) == [0, 1]
# All remaining ObjectRefs will contain the error.
try:
    ray.get([ref3, ref4])
except Exception as error:
    print(
        f"static num_returns: the remaining refs raise {type(error.cause).__name__}: {error.cause}"
    )

dynamic_ref = generator.options(num_returns="dynamic").remote()
ref_generator = ray.get(dynamic_ref)
ref1, ref2, ref3 = ref_generator
assert ray.get([ref1, ref2]) == [0, 1]
# Generators with num_returns="dynamic" will store the exception in the final
# ObjectRef.
try:
    ray.get(ref3)
except Exception as error:
    print(f"dynamic: the final ref raises {type(error.cause).__name__}: {error.cause}")

# An exception raised after all num_returns values were yielded is only logged.
ref1, ref2 = generator.options(num_returns=2).remote()
assert ray.get([ref1, ref2]) == [0, 1]
print("raised after the last expected yield: values kept", ray.get([ref1, ref2]))


# Ray only logs an error when a generator yields more values than num_returns (ray#28689);
# daskgen makes every ref raise, naming both counts.
@ray.remote
def three_values():
    yield from range(3)


ref1, ref2 = three_values.options(num_returns=2).remote()
try:
    ray.get([ref1, ref2])
except ValueError as error:
    print(f"surplus yields: {error.cause}")

ray.shutdown()
