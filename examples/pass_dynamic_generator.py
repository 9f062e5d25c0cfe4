"""Pass a dynamic generator, or the ref that resolves to it, from task to task.

    python examples/pass_dynamic_generator.py

A ``num_returns="dynamic"`` task returns one ref whose value is a ``DynamicObjectRefGenerator``:
the refs of everything the task yielded. That ref, or the generator itself, can be handed to
other tasks, which ``get`` the values where they run; the values never pass through the driver.
Starts an embedded cluster; runs in a few seconds.
"""

from __future__ import annotations

import numpy as np

import daskgen as ray


@ray.remote(num_returns="dynamic")
def split(array, chunk_size):
    """As many blocks as the array needs: only the task knows how many."""
    for start in range(0, len(array), chunk_size):
        yield array[start : start + chunk_size]


@ray.remote
def total(blocks):
    """``blocks`` is a DynamicObjectRefGenerator: iterate it once, get each block here."""
    return len(blocks), float(sum(ray.get(ref).sum() for ref in blocks))


@ray.remote
def total_of_nested(refs):
    """A ref nested in a container arrives as a ref: get it to reach the generator."""
    (outer_ref,) = refs
    blocks = ray.get(outer_ref)
    return type(outer_ref).__name__, type(blocks).__name__, len(blocks)


@ray.remote
def block_max(block):
    return float(block.max())


@ray.remote
def fan_out(blocks):
    """Start one task per block from inside a task, then combine their results."""
    return max(ray.get([block_max.remote(ref) for ref in blocks]))


@ray.remote(num_returns="dynamic")
def fails_after(n):
    yield from range(n)
    raise ValueError(f"gave up after {n} values")


@ray.remote
def values_until_error(blocks):
    got = []
    for ref in blocks:
        try:
            got.append(ray.get(ref))
        except ValueError as error:  # the final ref holds the generator's exception
            return got, str(error.cause)
    return got, None


def main() -> None:
    ray.init(num_cpus=2)
    array_ref = ray.put(np.arange(10_500, dtype=np.float64))
    expected = float(np.arange(10_500).sum())
    print(f"array of 10500 values, sum {expected:.0f}")

    # 1. The outer ref, passed at the top level, arrives as the DynamicObjectRefGenerator.
    outer_ref = split.remote(array_ref, 1000)
    n, s = ray.get(total.remote(outer_ref))
    print(f"outer ref passed to a task: {n} blocks, sum {s:.0f}")

    # 2. The generator itself can travel too (costs the driver one blocking get first).
    blocks = ray.get(outer_ref)
    print(f"driver holds {blocks!r}")
    n, s = ray.get(total.remote(blocks))
    print(f"generator passed to a task: {n} blocks, sum {s:.0f}")

    # Iterating in the driver consumed nothing remotely: a fresh get gives a full generator.
    print(f"in the driver: len before iterating {len(blocks)}", end="")
    first_block = next(blocks)
    print(f", after taking one {len(blocks)}; first block {ray.get(first_block)[:3]}...")

    # 3. Nested in a list, the outer ref stays a ref; the task gets it.
    ref_type, value_type, n = ray.get(total_of_nested.remote([outer_ref]))
    print(f"nested in a list: {ref_type} -> {value_type} of {n} refs")

    # 4. A task can start more tasks on the refs it was passed.
    print(f"max over blocks, fanned out from a task: {ray.get(fan_out.remote(outer_ref)):.0f}")

    # 5. A generator that raises: the values it yielded, then one ref holding the error.
    # As on Ray's page, keep the outer ref in a variable while tasks use it.
    failing_ref = fails_after.remote(3)
    got, error = ray.get(values_until_error.remote(failing_ref))
    print(f"failing generator: values {got}, then error {error!r}")

    del outer_ref, blocks, failing_ref  # dropping every ref frees the values in the cluster
    ray.shutdown()


if __name__ == "__main__":
    main()
