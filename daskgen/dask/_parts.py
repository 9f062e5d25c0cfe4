"""What the collections' tasks run (in the worker processes, inside Dask tasks): each partition
made from one stored value, and the small metadata tasks that read a value's shape or columns.

Every function here receives what Dask stored under a ref's key, which is not always the user's
value: a large builtin container is stored in a ``Put`` box, a failed ref holds an
``ErrorValue`` (see ``_protocol``). :func:`value_of` turns it into the user's value, or raises
the ref's error, so that a collection never shows a box and computing it raises daskgen's
error (``RayTaskError(Cause)``), as ``get`` would. Partitions are returned as they are: the
partition a collection computes is the very object the yield stored, not a copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .._objects.resolve import unwrap
from .._protocol import ErrorValue
from ..exceptions import fresh


def value_of(stored: Any) -> Any:
    """The user's value of what a key stores; a stored error raises (a fresh copy: raising
    the stored exception itself would hang this task's frames on it, in the worker's memory)."""
    if type(stored) is ErrorValue:
        raise fresh(stored.error) from None
    return unwrap(stored)


# ------------------------------------------------------------------------------------------ bags


def bag_batch(stored: Any, index: int) -> Any:
    """A bag partition that is one yield, itself a sequence of items (``batches=True``)."""
    value = value_of(stored)
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(
            f"Yield {index} is a {type(value).__name__}, not a list of items: with batches=True "
            "each yield is one partition of the bag (leave batches=False to make each yield "
            "one item)."
        )
    return list(value) if isinstance(value, Iterator) else value


def bag_items(*stored: Any) -> list[Any]:
    """A bag partition of several yields, each one item."""
    return [value_of(s) for s in stored]


# ---------------------------------------------------------------------------------------- arrays


def array_block(stored: Any, index: int, shape: tuple[int, ...], dtype: Any) -> Any:
    """One block of an array: the yield itself, checked against the shape and dtype the array
    was built with (Dask would silently misplace a block of another shape)."""
    value = value_of(stored)
    _check_array(value, index)
    if tuple(value.shape) != shape or value.dtype != dtype:
        raise ValueError(
            f"Yield {index} is an array of shape {tuple(value.shape)} and dtype {value.dtype}, "
            f"but to_array built the array with shape {shape} and dtype {dtype} for it."
        )
    return value


def describe_blocks(indices: list[int], *stored: Any) -> list[tuple[tuple[int, ...], Any]]:
    """The shape and dtype of each value (a metadata task: small, whatever the values are)."""
    out = []
    for index, s in zip(indices, stored, strict=True):
        value = value_of(s)
        _check_array(value, index)
        out.append((tuple(value.shape), value.dtype))
    return out


def _check_array(value: Any, index: int) -> None:
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise TypeError(
            f"Yield {index} is a {type(value).__name__}, not an array: to_array makes each "
            "yield one block of the array (a NumPy array)."
        )


# ------------------------------------------------------------------------------------ dataframes


def frame_heads(indices: list[int], *stored: Any) -> list[Any]:
    """Each value's first zero rows: columns, dtypes and index type, a dataframe's ``meta`` (a
    metadata task, run where the values are, so that only these empty frames travel)."""
    out = []
    for index, s in zip(indices, stored, strict=True):
        value = value_of(s)
        check_frame(value, index)
        out.append(value.iloc[:0])
    return out


def check_frame(value: Any, index: int) -> None:
    import pandas

    if not isinstance(value, (pandas.DataFrame, pandas.Series)):
        raise TypeError(
            f"Yield {index} is a {type(value).__name__}, not a pandas DataFrame or Series: "
            "to_dataframe makes each yield one partition of the dataframe."
        )


class FramePart:
    """Makes one dataframe partition from a yield (the function ``dask.dataframe.from_map``
    calls for each partition): the yield itself, checked against the dataframe's ``meta``
    when ``verify`` (as ``dask.dataframe.from_delayed(verify_meta=True)`` checks)."""

    def __init__(self, meta: Any, verify: bool) -> None:
        self.meta = meta
        self.verify = verify

    def __dask_tokenize__(self) -> Any:  # the collection's name: the same for the same meta
        from dask.base import tokenize

        return ("daskgen-frame-part", tokenize(self.meta), self.verify)

    def __call__(self, stored: Any, index: int) -> Any:
        value = value_of(stored)
        check_frame(value, index)
        if self.verify:
            self._check_meta(value, index)
        return value

    def _check_meta(self, value: Any, index: int) -> None:
        import pandas

        meta = self.meta
        if isinstance(value, pandas.DataFrame) != isinstance(meta, pandas.DataFrame):
            raise TypeError(
                f"Yield {index} is a {type(value).__name__}, but the dataframe's meta is a "
                f"{type(meta).__name__}."
            )
        if hasattr(meta, "columns"):
            same = list(value.columns) == list(meta.columns) and value.dtypes.equals(meta.dtypes)
            mine, theirs = dict(value.dtypes), dict(meta.dtypes)
        else:
            same = value.dtype == meta.dtype
            mine, theirs = {value.name: value.dtype}, {meta.name: meta.dtype}
        if not same:
            raise ValueError(
                f"Yield {index} does not match the dataframe's meta: its columns and dtypes are "
                f"{mine}, the meta's {theirs} (pass a meta= that fits every yield, or "
                "verify_meta=False)."
            )
