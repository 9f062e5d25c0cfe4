"""``to_bag``, ``to_array`` and ``to_dataframe`` (in the caller's process): a Dask collection
whose graph is built straight on the keys the refs hold, with one task per partition.

That one task is the partition (``_parts``): it takes the stored value as its only dependency
and returns it as it is, after turning a ``Put`` box into the user's value and an
``ErrorValue`` into daskgen's error. Dask runs it on the worker holding the value, so nothing
moves and nothing is copied: the partition is the yield's own object. Dask's own
``from_delayed`` on futures runs one task per partition for a bag (``reify``) and two for an
array block or a dataframe partition (an alias, then a concatenation alias or ``check_meta``);
this task takes their place.

The graph holds the refs' futures (a ``{key: future}`` entry per value, as Dask's persisted
collections hold theirs; Dask sends no task for them), so the collection, and every collection
made from it, keeps the values in the cluster for as long as it needs them, whatever becomes of
the refs and generators they came from. The tasks themselves name the keys, not the futures
(``_dask_internals.key_ref`` says why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._inputs import Deadline, read_metadata, read_source
from ._parts import FramePart, array_block, bag_batch, bag_items, describe_blocks, frame_heads

if TYPE_CHECKING:
    import dask.array
    import dask.bag
    import dask.dataframe

DATAFRAME_EXTRA = 'pip install "daskgen[dataframe]"'


def to_bag(
    source: Any,
    *,
    batches: bool = False,
    partition_size: int | None = None,
    timeout: float | None = None,
) -> dask.bag.Bag:
    """A ``dask.bag.Bag`` of the values of ``source``'s refs, in order.

    ``source``: a list of ``ObjectRef``, a ``DynamicObjectRefGenerator`` (or the ref of a
    ``num_returns="dynamic"`` call), or a streaming ``ObjectRefGenerator``, which this waits for
    until its task ends (see ``docs/user-guide/dask-collections.md``). Each value is one item of
    the bag, ``partition_size`` consecutive values to a partition (default: about 100
    partitions, as ``dask.bag.from_sequence``); with ``batches=True`` each value is a list of
    items and makes one partition by itself.

    Blocks until every ref's value exists in the cluster, for at most ``timeout`` seconds
    (``None``: no bound; ``0``: only what is ready now), past which it raises
    ``GetTimeoutError``. A failed ref makes computing its partition raise its error
    (``RayTaskError(Cause)``, as ``get`` does). Raises ``TypeError``/``ValueError`` for a bad
    argument.
    """
    import dask.bag
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if not isinstance(batches, bool):
        raise TypeError(f"to_bag: batches must be a bool, not {batches!r}")
    if partition_size is not None:
        _check_positive(partition_size, "partition_size")
        if batches:
            raise ValueError(
                "to_bag: partition_size groups items (batches=False); with batches=True each "
                "yield is a partition."
            )
    deadline = Deadline(timeout)
    src = read_source(source, "to_bag", deadline)
    args = src.args()
    tasks: list[tuple[Any, ...]]
    if batches:
        tasks = [(bag_batch, arg, i) for i, arg in enumerate(args)]
    else:
        size = partition_size or -(-len(args) // 100)
        tasks = [(bag_items, *args[i : i + size]) for i in range(0, len(args), size)]
    name = f"{src.label}-to-bag-{tokenize(args, batches, partition_size)}"
    layer: dict[Any, Any] = {(name, i): task for i, task in enumerate(tasks)}
    layer.update(src.futures())  # what keeps the values alive (Dask sends no task for these)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return dask.bag.Bag(graph, name, len(tasks))


def to_array(
    source: Any,
    *,
    axis: int = 0,
    shapes: Any = None,
    dtype: Any = None,
    timeout: float | None = None,
) -> dask.array.Array:
    """A ``dask.array.Array`` whose blocks are the values of ``source``'s refs (NumPy arrays),
    in order along ``axis``.

    ``source`` as for :func:`to_bag`. ``shapes``: each value's shape, one tuple for all of them
    or a list of one per ref; ``dtype``: theirs. What is not given is read from the values
    where they are (a small metadata task per worker holding them, or nothing for values that
    came inline with their refs): only shapes and dtypes travel. Blocks must agree on every
    axis but ``axis``; computing a block whose shape or dtype is not the one given raises
    ``ValueError`` (no value is converted: a block is the yield's own array).

    Blocks, ``timeout`` and errors as for :func:`to_bag`; a failed ref whose shape or dtype
    must be read raises its error here.
    """
    import dask.array
    import numpy
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"to_array: axis must be an int, not {axis!r}")
    deadline = Deadline(timeout)
    src = read_source(source, "to_array", deadline)
    n = len(src.items)
    dtypes: list[Any] = []
    if shapes is None:
        described = read_metadata(src, list(range(n)), describe_blocks, "to_array", deadline)
        block_shapes = [shape for shape, _ in described]
        dtypes = [kind for _, kind in described]
    else:
        block_shapes = _given_shapes(shapes, n)
    whose = "the dtype given" if dtype is not None else "yield 0's"
    if dtype is None:
        if not dtypes:
            dtypes = [read_metadata(src, [0], describe_blocks, "to_array", deadline)[0][1]]
        dtype = dtypes[0]
    dtype = numpy.dtype(dtype)
    for i, kind in enumerate(dtypes):
        if numpy.dtype(kind) != dtype:
            raise ValueError(
                f"to_array: yield {i} has dtype {numpy.dtype(kind)}, not {dtype} ({whose}): no "
                "value is converted, so every block must have the array's dtype."
            )
    axis, chunks = _chunks(block_shapes, axis)
    args = src.args()
    name = f"{src.label}-to-array-{tokenize(args, axis, block_shapes, dtype)}"
    layer: dict[Any, Any] = {}
    for i, (arg, shape) in enumerate(zip(args, block_shapes, strict=True)):
        position = [0] * len(shape)
        position[axis] = i
        layer[(name, *position)] = (array_block, arg, i, shape, dtype)
    layer.update(src.futures())  # what keeps the values alive (Dask sends no task for these)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return dask.array.Array(graph, name, chunks, dtype=dtype)


def to_dataframe(
    source: Any,
    *,
    meta: Any = None,
    verify_meta: bool = True,
    timeout: float | None = None,
) -> dask.dataframe.DataFrame | dask.dataframe.Series:
    """A ``dask.dataframe.DataFrame`` (or ``Series``) whose partitions are the values of
    ``source``'s refs (pandas DataFrames, or Series), in order; divisions unknown.

    ``source`` as for :func:`to_bag`. ``meta``: the columns and dtypes (anything
    ``dask.dataframe`` takes as ``meta``); if not given, the first value's, read where it is
    (``df.iloc[:0]`` in a small task, so only an empty frame travels; nothing when it came
    inline with its ref). Partitions are the yielded frames as they are: not copied, and no
    dtype converted (Dask's ``dataframe.convert-string`` is not applied). ``verify_meta``:
    computing a partition whose columns or dtypes differ from ``meta`` raises ``ValueError``.

    Needs pandas: ``pip install "daskgen[dataframe]"`` (``ImportError`` saying so otherwise).
    Blocks, ``timeout`` and errors as for :func:`to_bag`; with ``meta`` inferred, a failed
    first ref raises its error here.
    """
    dd = _dask_dataframe()
    import dask
    import pandas

    if not isinstance(verify_meta, bool):
        raise TypeError(f"to_dataframe: verify_meta must be a bool, not {verify_meta!r}")
    deadline = Deadline(timeout)
    src = read_source(source, "to_dataframe", deadline)
    if meta is None:
        meta = read_metadata(src, [0], frame_heads, "to_dataframe", deadline)[0]
    else:
        meta = dd.utils.make_meta(meta)
    if not isinstance(meta, (pandas.DataFrame, pandas.Series)):
        raise TypeError(
            f"to_dataframe: meta must describe a pandas DataFrame or Series, not a "
            f"{type(meta).__name__}."
        )
    # The partitions stay the user's frames: Dask would add a task per partition converting
    # text columns to its string dtype (a copy of those columns).
    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_map(
            FramePart(meta, verify_meta),
            _Held(src.args(), src.futures()),
            list(range(len(src.items))),
            meta=meta,
            divisions=None,
            label=f"{src.label}-to-dataframe",
            enforce_metadata=False,
        )


class _Held(list):  # type: ignore[type-arg]
    """The keys a dataframe's partitions read (``from_map`` hands one to each task), holding
    their futures as well: the collection, and every one made from it, keeps the values alive
    through this list, while its tasks hold keys only. Pickled, a plain list of the keys."""

    def __init__(self, args: list[Any], futures: dict[Any, Any]) -> None:
        super().__init__(args)
        self.futures = futures

    def __reduce__(self) -> Any:
        return list, (list(self),)


def _dask_dataframe() -> Any:
    try:
        import dask.dataframe
        import dask.dataframe.utils
    except ImportError as exc:
        raise ImportError(
            "daskgen.dask.to_dataframe needs pandas and pyarrow (dask.dataframe uses them): "
            f"{DATAFRAME_EXTRA}"
        ) from exc
    return dask.dataframe


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value!r}")


def _given_shapes(shapes: Any, n: int) -> list[tuple[int, ...]]:
    """``shapes`` as one shape per value: one shape (a tuple of ints) for all, or a list."""
    if isinstance(shapes, (tuple, list)) and all(_is_int(d) for d in shapes):
        return [tuple(shapes)] * n
    if not isinstance(shapes, (tuple, list)) or not all(
        isinstance(s, (tuple, list)) and all(_is_int(d) for d in s) for s in shapes
    ):
        raise TypeError(
            "to_array: shapes must be a shape (a tuple of ints) or a list of one shape per "
            f"ref, not {shapes!r}"
        )
    if len(shapes) != n:
        raise ValueError(f"to_array: shapes has {len(shapes)} shapes for {n} refs.")
    return [tuple(s) for s in shapes]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _chunks(shapes: list[tuple[int, ...]], axis: int) -> tuple[int, tuple[tuple[int, ...], ...]]:
    """The axis (made non-negative) and the array's chunks, blocks placed along ``axis``."""
    first = shapes[0]
    ndim = len(first)
    if ndim == 0:
        raise ValueError("to_array: the yields are 0-d: blocks need at least one axis.")
    if not -ndim <= axis < ndim:
        raise ValueError(f"to_array: axis {axis} is out of range for {ndim}-d blocks.")
    axis %= ndim
    for i, shape in enumerate(shapes):
        if len(shape) != ndim or any(shape[d] != first[d] for d in range(ndim) if d != axis):
            raise ValueError(
                f"to_array: yield {i} has shape {shape}, which does not fit beside yield 0's "
                f"{first} along axis {axis}."
            )
    chunks = tuple(
        tuple(s[axis] for s in shapes) if d == axis else (first[d],) for d in range(ndim)
    )
    return axis, chunks
