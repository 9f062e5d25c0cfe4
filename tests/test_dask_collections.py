"""``daskgen.dask``: yields into Dask collections (``to_bag``, ``to_array``, ``to_dataframe``)
and a collection's partitions into refs (``from_collection``). daskgen only: Ray has none.

The tests taking the ``ray`` fixture run twice: on the embedded cluster, and on a real ``dask
scheduler`` with two ``dask worker --nanny`` processes (this module's own, started once; the
session's embedded cluster comes back after). The others run on the embedded cluster.

Every remote function is made inside a function, so that it is pickled by value: the real
cluster's workers cannot import this module. Every wait is bounded (``HANG``): a collection is
computed through ``Client.compute(...).result(timeout=HANG)``.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import uuid

import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import realcluster
from distributed import Event, futures_of, get_task_stream
from distributed import wait as dask_wait
from realcluster import HANG, wait_until

import daskgen
import daskgen.dask as dgd
from daskgen.exceptions import GetTimeoutError, RayTaskError, TaskCancelledError

pytestmark = [
    pytest.mark.daskgen_only,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # num_returns="dynamic"
]

_REAL_ADDRESSES: set[str] = set()


@pytest.fixture(scope="module", params=["embedded", "real"])
def where(request, tmp_path_factory):
    """Where the ``ray`` fixture's tests run: None (the embedded cluster), or a real cluster."""
    if request.param == "embedded":
        yield None
        return
    with realcluster.start_cluster(tmp_path_factory.mktemp("cluster"), nanny=True) as cluster:
        _REAL_ADDRESSES.add(cluster.address)
        yield cluster
    daskgen.shutdown()  # the next test's first call starts the embedded cluster again


def _on(address: str | None) -> daskgen:
    if daskgen.is_initialized():
        current = daskgen.get_client().scheduler.address
        if (current if current in _REAL_ADDRESSES else None) != address:
            daskgen.shutdown()
    if address is None:
        daskgen.init(num_cpus=2, ignore_reinit_error=True)
    else:
        daskgen.init(address=address, ignore_reinit_error=True)
    return daskgen


@pytest.fixture
def ray(where, monkeypatch):
    """daskgen on the embedded cluster, then on the real one."""
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    api = _on(None if where is None else where.address)
    if where is not None:
        where.wait_for_workers(2)
    return api


@pytest.fixture
def local(monkeypatch):
    """daskgen on the embedded cluster only."""
    monkeypatch.delenv("DASKGEN_ADDRESS", raising=False)
    return _on(None)


# ------------------------------------------------------------------------------------- helpers


def _compute(ray, collection):
    return ray.get_client().compute(collection).result(timeout=HANG)


def _persist(ray, collection):
    persisted = ray.get_client().persist(collection)
    dask_wait(futures_of(persisted), timeout=HANG)
    return persisted


def _in_scheduler(ray, keys):
    keys = list(keys)
    return ray.get_client().run_on_scheduler(
        lambda dask_scheduler: [key in dask_scheduler.tasks for key in keys]
    )


def _settle_releases(ray):
    """Return once every ref dropped before this call has been released on the scheduler:
    a ref dropped after them is forgotten there (releases reach the scheduler in order)."""
    gc.collect()
    marker = ray.put(0)
    key = marker.key
    del marker
    gc.collect()
    wait_until(lambda: _in_scheduler(ray, [key]) == [False], "the marker was released", HANG)


def _blocks():
    @daskgen.remote
    def blocks(n, rows=128):
        import numpy as np

        for i in range(n):
            yield np.full((rows, 128), i, dtype=np.float64)  # 128 KiB: not sent inline

    return blocks


def _frames():
    @daskgen.remote
    def frames(n):
        import numpy as np
        import pandas as pd

        for i in range(n):
            yield pd.DataFrame({"x": np.arange(4) + 10 * i, "name": list("abcd")})

    return frames


def _failing():
    @daskgen.remote
    def failing(n):
        import numpy as np

        for i in range(n):
            yield np.arange(2) + i
        raise ValueError("the generator failed after its yields")

    return failing


def _expected_frame(n):
    return pd.concat(
        [pd.DataFrame({"x": np.arange(4) + 10 * i, "name": list("abcd")}) for i in range(n)]
    )


# ----------------------------------------------------------------------------------- the values


def test_a_dynamic_generators_yields_become_the_items_of_a_bag(ray):
    @ray.remote(num_returns="dynamic")
    def records(n):
        for i in range(n):
            yield {"i": i, "square": i * i}

    outer = records.remote(5)
    bag = dgd.to_bag(outer, partition_size=2, timeout=HANG)  # the call's ref
    assert bag.npartitions == 3
    assert _compute(ray, bag.pluck("square")) == [0, 1, 4, 9, 16]
    dynamic = ray.get(outer, timeout=HANG)
    assert _compute(ray, dgd.to_bag(dynamic, timeout=HANG).count()) == 5
    assert len(dynamic) == 5  # read, not taken: it can still be iterated
    assert [r["i"] for r in ray.get(list(dynamic), timeout=HANG)] == list(range(5))


def test_num_returns_refs_become_an_array_along_the_axis_asked(ray):
    refs = _blocks().options(num_returns=3).remote(3, rows=2)
    expected = [np.full((2, 128), i, dtype=np.float64) for i in range(3)]
    rows = dgd.to_array(refs, timeout=HANG)
    assert rows.shape == (6, 128) and rows.chunks == ((2, 2, 2), (128,))
    np.testing.assert_array_equal(_compute(ray, rows), np.concatenate(expected))
    columns = dgd.to_array(refs, axis=1, shapes=(2, 128), dtype="float64", timeout=HANG)
    assert columns.shape == (2, 384) and columns.dtype == np.float64
    np.testing.assert_array_equal(_compute(ray, columns), np.concatenate(expected, axis=1))
    assert _compute(ray, (columns[:, ::128] + 1).sum()) == (1 + 2 + 3) * 2


def test_a_streaming_generator_becomes_a_dataframe_once_it_has_ended(ray):
    frame = dgd.to_dataframe(_frames().remote(3), timeout=HANG)
    assert frame.npartitions == 3 and not frame.known_divisions
    assert list(frame.columns) == ["x", "name"]
    expected = _expected_frame(3)
    assert dict(frame.dtypes) == dict(expected.dtypes)  # the yields' own dtypes, unconverted
    pd.testing.assert_frame_equal(_compute(ray, frame), expected)
    assert _compute(ray, frame.x.sum()) == expected.x.sum()


def test_a_boxed_list_is_a_bag_partition_and_never_a_box(ray):
    @ray.remote
    def batches(n):
        for i in range(n):
            yield list(range(i * 20_000, (i + 1) * 20_000))  # large: stored in a Put box

    bag = dgd.to_bag(batches.remote(2), batches=True, timeout=HANG)
    assert bag.npartitions == 2
    assert _compute(ray, bag) == list(range(40_000))
    put = ray.put(list(range(1000)))  # put values are always boxed
    assert _compute(ray, dgd.to_bag([put], batches=True, timeout=HANG).sum()) == sum(range(1000))
    assert _compute(ray, dgd.to_bag([put, put], timeout=HANG)) == [list(range(1000))] * 2


# ------------------------------------------------------------------------------------- errors


def test_a_failed_yield_raises_the_generators_error_when_the_collection_is_computed(ray):
    outer = _failing().options(num_returns="dynamic").remote(2)  # 2 values, then the error
    bag = dgd.to_bag(outer, batches=True, timeout=HANG)
    assert bag.npartitions == 3
    with pytest.raises(ValueError, match="failed after its yields") as info:
        _compute(ray, bag)
    assert isinstance(info.value, RayTaskError)
    # Shapes given: building reads nothing; computing the failed block raises.
    array = dgd.to_array(outer, shapes=(2,), dtype="int64", timeout=HANG)
    np.testing.assert_array_equal(_compute(ray, array[:4]), [0, 1, 1, 2])
    with pytest.raises(RayTaskError, match="failed after its yields"):
        _compute(ray, array)
    # Shapes read from the values: the failed one raises at once.
    with pytest.raises(ValueError, match="failed after its yields") as info:
        dgd.to_array(outer, timeout=HANG)
    assert isinstance(info.value, RayTaskError)


def test_a_dataframe_takes_its_meta_from_the_first_yield_and_raises_a_later_error(ray):
    @ray.remote(num_returns="dynamic")
    def frames_then_error(n):
        import pandas as pd

        for i in range(n):
            yield pd.DataFrame({"x": [i]})
        raise KeyError("no more frames")

    frame = dgd.to_dataframe(frames_then_error.remote(2), timeout=HANG)
    assert frame.npartitions == 3
    assert _compute(ray, frame.partitions[:2]).x.tolist() == [0, 1]
    with pytest.raises(KeyError, match="no more frames") as info:
        _compute(ray, frame)
    assert isinstance(info.value, RayTaskError)


# ----------------------------------------------------------------------------------- lifetime


def test_the_collection_keeps_the_yields_alive_after_the_refs_and_generator_are_gone(ray):
    gen = _frames().remote(4)
    refs = list(gen)
    keys = [ref.key for ref in refs]
    frame = dgd.to_dataframe(refs, timeout=HANG)
    derived = frame[frame.x % 2 == 0].x + 1  # made from it, not persisted
    persisted = _persist(ray, frame.assign(y=frame.x * 2))
    del gen, refs, frame
    _settle_releases(ray)
    assert _in_scheduler(ray, keys) == [True] * 4  # the collections hold them
    expected = _expected_frame(4)
    pd.testing.assert_series_equal(_compute(ray, derived), expected.x[expected.x % 2 == 0] + 1)
    del derived
    _settle_releases(ray)
    wait_until(lambda: not any(_in_scheduler(ray, keys)), "the yields were freed", HANG)
    # The persisted collection holds its own partitions (the same objects, not copies).
    pd.testing.assert_series_equal(_compute(ray, persisted.y), expected.x * 2, check_names=False)


# ----------------------------------------------------------------------- tasks run, and copies


def _ours(stream, name):
    return [t for t in stream.data if isinstance(t["key"], tuple) and t["key"][0] == name]


def test_each_partition_is_one_task_on_its_key_and_metadata_one_task_per_worker(ray):
    client = ray.get_client()
    refs = list(_blocks().remote(6))
    with get_task_stream(client=client) as building:
        array = dgd.to_array(refs, timeout=HANG)  # shapes and dtype read from the values
    # One generator: its yields are on one worker, and one metadata task reads them there.
    assert len(building.data) == 1 and "-to-array-meta-" in str(building.data[0]["key"])
    with get_task_stream(client=client) as given:
        dgd.to_array(refs, shapes=(128, 128), dtype="float64", timeout=HANG)
    assert given.data == []
    with get_task_stream(client=client) as persisting:
        _persist(ray, array)
    assert len(persisting.data) == 6 == len(_ours(persisting, array.name))
    # Dask's own way, on the same futures: an alias per block, then a concatenation alias.
    own = da.concatenate(
        [da.from_delayed(r._future, shape=(128, 128), dtype="float64") for r in refs]
    )
    with get_task_stream(client=client) as dasks:
        _persist(ray, own)
    assert len(persisting.data) <= len(dasks.data)

    frames = list(_frames().remote(5))
    frame = dgd.to_dataframe(frames, timeout=HANG)
    with get_task_stream(client=client) as persisting:
        _persist(ray, frame)
    assert len(persisting.data) == 5 == len(_ours(persisting, frame._name))
    own_frame = dd.from_delayed([r._future for r in frames], meta=frame._meta)
    with get_task_stream(client=client) as dasks:
        _persist(ray, own_frame)
    assert len(persisting.data) <= len(dasks.data)

    batches = dgd.to_bag(refs, batches=True, timeout=HANG)
    items = dgd.to_bag(refs, partition_size=4, timeout=HANG)
    with get_task_stream(client=client) as persisting:
        _persist(ray, batches)
        _persist(ray, items)
    assert len(_ours(persisting, batches.name)) == 6  # one per yield, as Dask's reify
    assert len(_ours(persisting, items.name)) == 2  # one per partition of 4 yields
    assert len(persisting.data) == 8


def test_a_partition_is_the_yields_own_object_on_its_worker(ray):
    client = ray.get_client()

    def same_objects(pairs, unbox=False):
        def check(dask_worker):
            data = dask_worker.data
            found = [(a, b) for a, b in pairs if a in data and b in data]
            return [data[a] is (data[b].value if unbox else data[b]) for a, b in found]

        return [same for found in client.run(check).values() for same in found]

    refs = list(_blocks().remote(3))
    array = _persist(ray, dgd.to_array(refs, timeout=HANG))
    blocks = [key for row in array.__dask_keys__() for key in row]
    assert same_objects(list(zip(blocks, [r.key for r in refs], strict=True))) == [True] * 3

    frames = list(_frames().remote(3))
    frame = _persist(ray, dgd.to_dataframe(frames, timeout=HANG))
    part_refs = dgd.from_collection(frame)
    pairs = list(zip([r.key for r in part_refs], [r.key for r in frames], strict=True))
    assert same_objects(pairs) == [True] * 3

    @ray.remote
    def batches(n):
        for i in range(n):
            yield list(range(i, i + 20_000))  # stored in a Put box

    boxed = list(batches.remote(2))
    bag = _persist(ray, dgd.to_bag(boxed, batches=True, timeout=HANG))
    pairs = list(zip(bag.__dask_keys__(), [r.key for r in boxed], strict=True))
    assert same_objects(pairs, unbox=True) == [True] * 2


# ----------------------------------------------------------------------------- from_collection


def test_refs_of_a_persisted_collections_partitions_run_no_task(ray):
    client = ray.get_client()
    bag = _persist(ray, db.from_sequence(range(6), npartitions=3).map(lambda x: x * 10))
    array = _persist(ray, da.arange(12, chunks=4).reshape(3, 4).rechunk((1, 4)) + 1)
    frame = _persist(ray, dd.from_pandas(pd.DataFrame({"x": range(6)}), npartitions=2) + 1)
    with get_task_stream(client=client) as stream:
        bag_refs = dgd.from_collection(bag)
        array_refs = dgd.from_collection(array)
        frame_refs = dgd.from_collection(frame)
    assert stream.data == []
    assert [r.key for r in bag_refs] == bag.__dask_keys__()
    assert {r.key for r in frame_refs} == {f.key for f in futures_of(frame)}
    assert ray.get(bag_refs, timeout=HANG) == [[0, 10], [20, 30], [40, 50]]
    assert [a.tolist() for a in ray.get(array_refs, timeout=HANG)] == [
        [[1, 2, 3, 4]],
        [[5, 6, 7, 8]],
        [[9, 10, 11, 12]],
    ]
    assert [f.x.tolist() for f in ray.get(frame_refs, timeout=HANG)] == [[1, 2, 3], [4, 5, 6]]


def test_partition_refs_are_task_arguments_and_outlive_their_collection(ray):
    frame = dgd.to_dataframe(_frames().remote(3), timeout=HANG)
    refs = dgd.from_collection(frame.assign(y=frame.x * 2))  # not persisted: persisted first
    keys = [ref.key for ref in refs]

    @ray.remote
    def rows(part, nested):
        import daskgen

        (inner,) = nested
        return len(part), int(part.y.sum()), type(inner).__name__, len(daskgen.get(inner))

    assert ray.get(rows.remote(refs[0], [refs[2]]), timeout=HANG) == (4, 12, "ObjectRef", 4)
    del frame
    _settle_releases(ray)
    assert _in_scheduler(ray, keys) == [True] * 3
    assert [int(p.y.sum()) for p in ray.get(refs, timeout=HANG)] == [12, 92, 172]
    del refs
    _settle_releases(ray)
    wait_until(lambda: not any(_in_scheduler(ray, keys)), "the partitions were freed", HANG)


# ------------------------------------------------------------------ streaming, embedded cluster


def _gated():
    @daskgen.remote
    def gated(n, name):
        from distributed import Event

        yield 0
        if not Event(name).wait(timeout=60):
            raise TimeoutError("the test never released the generator")
        yield from range(1, n)

    return gated


def test_a_streaming_generator_is_waited_for_and_a_timeout_loses_none_of_its_refs(local):
    name = f"daskgen-test-gate-{uuid.uuid4().hex}"
    gen = _gated().remote(5, name)
    try:
        with pytest.raises(GetTimeoutError, match="has not finished"):
            dgd.to_bag(gen, timeout=0)  # takes a finished generator only
        with pytest.raises(GetTimeoutError, match="did not finish within 0.5 s"):
            dgd.to_bag(gen, timeout=0.5)  # may take the first ref, and keeps it for later
    finally:
        Event(name, client=local.get_client()).set()
    assert _compute(local, dgd.to_bag(gen, timeout=HANG)) == [0, 1, 2, 3, 4]


def test_a_backpressured_stream_is_taken_as_it_comes(local):
    @local.remote(_generator_backpressure_num_objects=2)
    def paced(n):
        yield from range(n)

    assert _compute(local, dgd.to_bag(paced.remote(10), timeout=HANG).sum()) == 45


def test_a_cancelled_stream_raises_task_cancelled_when_computed(local):
    name = f"daskgen-test-gate-{uuid.uuid4().hex}"
    gen = _gated().remote(5, name)
    try:
        local.cancel(gen)
        bag = dgd.to_bag(gen, timeout=HANG)
    finally:
        Event(name, client=local.get_client()).set()
    with pytest.raises(TaskCancelledError):
        _compute(local, bag)


def test_refs_of_many_tasks_and_of_actors_make_one_array(local):
    @local.remote
    def block(i):
        import numpy as np

        return np.full(20_000, i)  # 160 KB: not inline

    @local.remote
    class Maker:
        def block(self, i):
            import numpy as np

            return np.full(3, i)

    maker = Maker.remote()
    refs = [block.remote(i) for i in range(4)] + [maker.block.remote(9)]  # an actor's, direct
    assert len(local.wait(refs, num_returns=5, timeout=HANG)[0]) == 5
    with get_task_stream(client=local.get_client()) as building:
        array = dgd.to_array(refs, timeout=HANG)
    assert len(building.data) <= 2  # at most one metadata task per worker holding values
    assert array.chunks == ((20_000,) * 4 + (3,),)
    values = _compute(local, array)
    assert values[::20_000].tolist() == [0, 1, 2, 3, 9] and len(values) == 80_003


# --------------------------------------------------------------------------------- bad input


def test_bad_sources_and_arguments_raise_errors_naming_them(local):
    ref = local.put(1)
    for bad, error, match in [
        ("refs", TypeError, "source must be a list of ObjectRefs"),
        ({"a": ref}, TypeError, "source must be a list of ObjectRefs"),
        (3, TypeError, "source must be a list of ObjectRefs"),
        ([ref, 2], TypeError, r"source\[1\] is a int, not an ObjectRef"),
        ([], ValueError, "source has no refs"),
        (ref, TypeError, "a single ref must be that of a num_returns='dynamic' call"),
    ]:
        with pytest.raises(error, match=match):
            dgd.to_bag(bad, timeout=HANG)
    with pytest.raises(TypeError, match="batches must be a bool"):
        dgd.to_bag([ref], batches=1)
    with pytest.raises(ValueError, match="partition_size must be >= 1"):
        dgd.to_bag([ref], partition_size=0)
    with pytest.raises(ValueError, match="with batches=True each yield is a partition"):
        dgd.to_bag([ref], batches=True, partition_size=2)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        dgd.to_bag([ref], timeout=-1)
    with pytest.raises(TypeError, match="axis must be an int"):
        dgd.to_array([ref], axis="0")
    with pytest.raises(TypeError, match="verify_meta must be a bool"):
        dgd.to_dataframe([ref], verify_meta="yes")
    with pytest.raises(TypeError, match="collection must be a Dask collection"):
        dgd.from_collection([ref])


def test_values_that_do_not_fit_the_collection_are_named(local):
    refs = _blocks().options(num_returns=2).remote(2, rows=2)
    with pytest.raises(TypeError, match="shapes must be a shape"):
        dgd.to_array(refs, shapes="2x128", timeout=HANG)
    with pytest.raises(ValueError, match="shapes has 3 shapes for 2 refs"):
        dgd.to_array(refs, shapes=[(2, 128)] * 3, timeout=HANG)
    with pytest.raises(ValueError, match="axis 2 is out of range for 2-d blocks"):
        dgd.to_array(refs, axis=2, timeout=HANG)
    with pytest.raises(ValueError, match="yield 1 has shape \\(2, 64\\), which does not fit"):
        dgd.to_array(refs, shapes=[(2, 128), (2, 64)], dtype=float, timeout=HANG)
    with pytest.raises(ValueError, match="yield 0 has dtype float64, not int32"):
        dgd.to_array(refs, dtype="int32", timeout=HANG)
    wrong = dgd.to_array(refs, shapes=(2, 64), dtype=float, timeout=HANG)
    with pytest.raises(ValueError, match=r"Yield \d is an array of shape \(2, 128\)"):
        _compute(local, wrong)

    @local.remote(num_returns=2)
    def not_arrays():
        yield [1, 2]
        yield "text"

    items = not_arrays.remote()
    with pytest.raises(TypeError, match="Yield 0 is a list, not an array"):
        dgd.to_array(items, timeout=HANG)
    with pytest.raises(TypeError, match="Yield 0 is a list, not a pandas DataFrame"):
        dgd.to_dataframe(items, timeout=HANG)
    with pytest.raises(TypeError, match="Yield 1 is a str, not a list of items"):
        _compute(local, dgd.to_bag(items, batches=True, timeout=HANG))


def test_partitions_are_checked_against_a_meta_given(local):
    frames = list(_frames().remote(2))
    meta = pd.DataFrame({"x": pd.Series([], dtype="int64"), "name": pd.Series([], dtype=object)})
    checked = dgd.to_dataframe(frames, meta=meta, timeout=HANG)
    with pytest.raises(ValueError, match="Yield \\d does not match the dataframe's meta"):
        _compute(local, checked)
    unchecked = dgd.to_dataframe(frames, meta=meta, verify_meta=False, timeout=HANG)
    assert _compute(local, unchecked.x.sum()) == _expected_frame(2).x.sum()
    with pytest.raises(TypeError, match="meta must describe a pandas DataFrame or Series"):
        dgd.to_dataframe(frames, meta=np.zeros(2), timeout=HANG)


# ------------------------------------------------------------------------------------ pandas


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG
    )


def test_importing_daskgen_and_daskgen_dask_needs_no_pandas():
    proc = _python(
        "import sys, daskgen, daskgen.dask; "
        "print(sorted(m for m in ('pandas', 'dask.dataframe', 'pyarrow') if m in sys.modules))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_without_pandas_to_dataframe_names_the_extra_to_install():
    proc = _python(
        "import sys\n"
        "class NoPandas:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pandas', 'pyarrow'):\n"
        "            raise ImportError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, NoPandas())\n"
        "import daskgen.dask\n"
        "try:\n"
        "    daskgen.dask.to_dataframe([])\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "daskgen[dataframe]"' in proc.stdout
