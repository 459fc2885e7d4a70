"""Format 2 shards: every reader sees the same bits for 1, 2 and many shards, and `Store.array`
indexes like the NumPy array it replaces while mapping a bounded number of shards."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import xarray as xr
import zarr

from canonstore import open_store
from canonstore.errors import StoreError
from canonstore.formats.shards import ShardedArray, take_rows
from canonstore.preprocess import build
from canonstore.preprocess.append import append
from tests.helpers import demo_recipe

silent = {"progress": False}


@pytest.fixture(scope="module")
def layouts(tiny_raw, tiny_store, tmp_path_factory) -> dict:
    """The tiny demo as one shard, two shards (the second partial) and many (the session's tiny store)."""
    folder = tmp_path_factory.mktemp("layouts")
    stores = {"many": tiny_store}
    for name, shard_mb in (("one", 1024), ("two", 20)):
        (folder / name).mkdir()
        stores[name] = build(
            demo_recipe(folder / name, tiny_raw, storage={"shard_mb": shard_mb}), folder / name / "demo.zarr", **silent
        ).path
    return stores


@pytest.mark.parametrize("name, shards", [("one", 1), ("two", 2), ("many", 37)])
def test_memmap_zarr_xarray_and_tensorstore_read_the_same_bits(layouts, name, shards):
    path = layouts[name]
    store = open_store(path)
    assert store.attrs["layout"]["shards"] == shards == len(list((path / "data" / "c").iterdir()))
    mapped = np.asarray(store.array)
    assert mapped.tobytes() == zarr.open_array(path / "data", mode="r")[...].tobytes()
    assert mapped.tobytes() == xr.open_zarr(path, chunks=None)["data"].values.tobytes()
    ts = pytest.importorskip("tensorstore")
    data = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "data")}}, read=True).result()
    assert data.read().result().tobytes() == mapped.tobytes()  # every shard, the partial last one included
    if shards == 2:  # the partial last shard marks the chunks past the end missing, per the sharding spec
        steps = store.attrs["layout"]["shard_steps"]
        raw = (path / "data" / "c" / "1" / "0" / "0" / "0").read_bytes()
        index = np.frombuffer(raw[-(16 * steps + 4) : -4], "<u8").reshape(steps, 2)
        present = store.shape[0] - steps
        assert (index[present:] == 2**64 - 1).all() and (index[:present, 1] == mapped[0].nbytes).all()


def test_sharded_array_indexes_like_numpy(layouts):
    store = open_store(layouts["many"])
    array, whole = store.array, np.asarray(open_store(layouts["one"]).array)
    assert isinstance(array, ShardedArray) and isinstance(open_store(layouts["one"]).array, np.memmap)
    assert array.shape == whole.shape and array.dtype == whole.dtype and len(array) == len(whole)
    assert array.ndim == 4 and array.nbytes == whole.nbytes
    s = array.shard_steps
    for i in (0, s - 1, s, -1, -len(whole)):
        np.testing.assert_array_equal(array[i], whole[i])
    for key in (slice(3, 9), slice(s - 2, s + 3), slice(None, None, 50), slice(-5, None), slice(10, 3)):
        np.testing.assert_array_equal(array[key], whole[key])
    assert np.shares_memory(array[3:9], array.shard(0))  # inside one shard: a view
    rows = np.array([0, 5, s - 1, s, 3 * s + 2, len(whole) - 1])
    np.testing.assert_array_equal(array[rows], whole[rows])
    np.testing.assert_array_equal(array[list(rows[::-1])], whole[rows[::-1]])
    np.testing.assert_array_equal(array[rows, 2], whole[rows, 2])
    np.testing.assert_array_equal(array[rows, 1:4, ..., 0], whole[rows, 1:4, ..., 0])
    np.testing.assert_array_equal(array[7, [3, 1]], whole[7, [3, 1]])
    mask = np.zeros(len(whole), bool)
    mask[rows] = True
    np.testing.assert_array_equal(array[mask], whole[mask])
    np.testing.assert_array_equal(array[...], whole)
    with pytest.raises(IndexError):
        array[len(whole)]
    with pytest.raises(IndexError):
        array[np.array([0, len(whole)])]


def test_take_rows_fills_out_and_refuses_rows_out_of_range(layouts):
    """take_rows runs np.take with mode="clip" (no temporary): a row out of range must still be an error."""
    n_channels = open_store(layouts["one"]).shape[1]
    for name in ("one", "many"):  # a memmap, a ShardedArray
        array = open_store(layouts[name]).array
        whole = np.asarray(array).reshape(-1, int(np.prod(array.shape[2:])))  # (step x channel) rows
        rows = np.array([0, 3, 40, len(whole) - 1])
        out = np.full((rows.size, whole.shape[1]), np.nan, np.float32)
        take_rows(array, rows, out, n_channels)
        np.testing.assert_array_equal(out, whole[rows])
        for bad in (len(whole), -1):
            with pytest.raises(IndexError, match="out of range"):
                take_rows(array, np.array([0, bad]), out[:2], n_channels)


def test_a_bounded_number_of_shards_stay_mapped_and_views_outlive_eviction(layouts):
    store = open_store(layouts["many"])
    array = ShardedArray(store.path, store.shape, store.dtype, store.array.shard_steps, max_mapped=3)
    first = array[0]
    expected = first.copy()
    for k in range(array.shards):
        array[k * array.shard_steps]
        assert len(array._mapped) <= 3
    assert 0 not in array._mapped
    np.testing.assert_array_equal(first, expected)  # the view keeps its own mapping alive


def test_format_1_stores_open_read_only_and_are_rebuilt_not_appended(layouts, tmp_path, tiny_raw):
    import shutil

    out = tmp_path / "v1.zarr"
    shutil.copytree(layouts["one"], out)
    root = json.loads((out / "zarr.json").read_text())  # a version 1 store: today's one-shard layout
    root["attributes"]["canonstore"]["format_version"] = 1
    (out / "zarr.json").write_text(json.dumps(root))
    store = open_store(out)
    np.testing.assert_array_equal(store.array[5], open_store(layouts["one"]).array[5])
    recipe = demo_recipe(tmp_path, tiny_raw, storage={"shard_mb": 1024})
    with pytest.raises(StoreError, match="format version 1, appends need 2"):
        append(out, recipe, **silent)
    assert build(recipe, out, **silent).built  # not up to date: a full rebuild to version 2
    assert open_store(out).attrs["format_version"] == 2


@pytest.fixture(scope="module")
def small_layouts(tmp_path_factory) -> dict:
    """23 daily steps of two variables on a 3x4 grid, as 5 shards of 5 steps (the last partial) and as one."""
    import pandas as pd

    from tests.helpers import write_recipe

    folder = tmp_path_factory.mktemp("small")
    values = np.random.default_rng(3).normal(size=(23, 2, 3, 4))
    xr.Dataset(
        {v: (("time", "lat", "lon"), values[:, k], {"units": "K"}) for k, v in enumerate("ab")},
        coords={
            "time": pd.date_range("2000-01-01", periods=23),
            "lat": [0.0, 10.0, 20.0],
            "lon": [0.0, 10.0, 20.0, 30.0],
        },
    ).to_netcdf(folder / "ab.nc")
    stores = {}
    for name, shard_mb in (("five", 5 * 96 / 2**20), ("one", 1024)):
        recipe = write_recipe(
            folder,
            name=name,
            sources=[str(folder / "ab.nc")],
            storage={"shard_mb": shard_mb},
            splits={"by": "index", "train": [0, 15], "test": [16, 22]},
        )
        stores[name] = open_store(build(recipe, folder / f"{name}.zarr", **silent).path)
    assert stores["five"].attrs["layout"]["shards"] == 5 and stores["one"].attrs["layout"]["shards"] == 1
    return stores


def _random_index(rng, length: int, second: int):
    """One index component for an axis of `length` (and `second` after it): NumPy's every kind, some invalid."""
    kind = rng.integers(15)
    if kind == 0:
        return int(rng.integers(-length - 1, length + 1))
    if kind == 1:
        return bool(rng.integers(2)) if rng.integers(2) else np.bool_(rng.integers(2))
    if kind in (2, 3, 4):
        bound = lambda: None if rng.integers(4) == 0 else int(rng.integers(-length - 3, length + 3))  # noqa: E731
        return slice(bound(), bound(), [None, 1, 2, 3, -1, -2, -4][rng.integers(7)])
    if kind == 5:
        return None
    if kind == 6:
        return Ellipsis
    if kind == 7:
        return [int(i) for i in rng.integers(-length, length, size=rng.integers(0, 4))]
    if kind == 8:
        return rng.integers(-length, length, size=[(), (3,), (0,), (2, 3)][rng.integers(4)])
    if kind == 9:
        return np.array([0, length]) if rng.integers(2) else np.array([-length - 1])  # out of bounds
    if kind == 10:
        return rng.random(length) < 0.4
    if kind == 11:
        return rng.random((length, second)) < 0.3
    if kind == 12:
        return rng.random(length + 1) < 0.5  # wrong length
    if kind == 13:  # empty: NumPy checks no boolean axis of length 0 (legacy), only the others
        return np.zeros([(0,), (0, second), (0, second + 1), (length, 0), (0, 0)][rng.integers(5)], bool)
    return np.array(bool(rng.integers(2)))


def _random_key(rng, shape):
    parts, axis = [], 0
    for _ in range(rng.integers(0, 5)):
        part = _random_index(rng, shape[min(axis, len(shape) - 1)], shape[min(axis + 1, len(shape) - 1)])
        parts.append(part)
        axis += 0 if part is None or part is Ellipsis or isinstance(part, (bool, np.bool_)) else 1
    if len(parts) == 1 and rng.integers(2):
        return parts[0]
    return tuple(parts)


def _same_as_numpy(array, whole, key):
    try:
        expected = whole[key]
    except Exception as exc:  # the same kind of error, or a wrong answer
        with pytest.raises(type(exc)):
            array[key]
        return
    got = array[key]
    assert got.shape == expected.shape and got.dtype == expected.dtype, key
    np.testing.assert_array_equal(got, expected, err_msg=repr(key))


def test_sharded_array_corner_cases_match_numpy(small_layouts):
    """a[True] was step 1, a[[]], a[()] and a[np.array([], bool)] raised IndexError; NumPy gives (1, T, ...),
    (0, ...), the array and (0, ...)."""
    array = small_layouts["five"].array
    whole = np.asarray(small_layouts["one"].array).copy()
    assert isinstance(array, ShardedArray) and array.shards == 5
    for key in (
        True,
        False,
        [],
        (),
        np.array(True),
        np.array([], int),
        (None,),
        (None, 3),
        (Ellipsis, 1),
        (1, Ellipsis, 2),
        slice(None, None, -1),
        slice(-2, 3, -3),
        (slice(19, 2, -4), [0, 1]),
        (Ellipsis, None),
        (None, Ellipsis, 0),
        np.array([[0, 22], [5, 6]]),
        (np.array([[0, 22], [5, 6]]), 1),
        (whole[:, :, 0, 0] > 0),
        ([3, 7], slice(None), [1, 2]),
        (slice(2, 12), [1, 0], 2),
        (slice(None), True),
        ([4, 9, 13], True),
        (slice(None), None, [[1], [0]]),
        ([[1, 2]], [[0], [1]]),
        np.array([], bool),
        (np.array([], bool),),
        (np.array([], bool), 1),
        (1, np.array([], bool)),
        np.zeros((0, 2), bool),
        np.zeros((23, 0), bool),
        np.zeros((0, 3), bool),
        (np.array([], bool), [0]),
    ):
        _same_as_numpy(array, whole, key)


@pytest.mark.parametrize("layout", ["five", "one", "memmap"])
def test_indexing_matches_numpy_over_generated_keys(small_layouts, layout):
    """Property test: thousands of random keys (every kind NumPy takes, some invalid) against np.asarray(a)[key]."""
    store = small_layouts["one" if layout != "five" else "five"]
    whole = np.asarray(small_layouts["one"].array).copy()
    array = store.array if layout != "one" else ShardedArray(store.path, store.shape, store.dtype, store.shape[0])
    assert isinstance(array, np.memmap if layout == "memmap" else ShardedArray)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        _same_as_numpy(array, whole, _random_key(rng, whole.shape))


def test_threads_mapping_shards_at_once_under_a_small_map_cache(tiny_store):
    """The batch loader's gather threads call `shard` at once; evictions by one never break another's lookup."""
    import threading

    array = open_store(tiny_store).array
    array.max_mapped = 1
    errors = []

    def hammer(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(5000):
                k = int(rng.integers(0, array.shards))
                assert array.shard(k).shape[0] == array.layout.steps_in(k)
        except Exception as exc:  # noqa: BLE001 - collected, asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert pickle.loads(pickle.dumps(array)).shard(0).shape == array.shard(0).shape  # the lock is not pickled


def test_reads_of_whole_steps_land_in_page_aligned_buffers(layouts, tmp_path):
    # The shard files' steps start on pages; a destination 16 bytes past one (where glibc puts a large
    # np.empty) made memmap copies and preads 2-7x slower (4K aliasing, canonstore.buffers).
    import mmap

    from canonstore.formats.npy import block_reader
    from canonstore.formats.shards import take_fields
    from canonstore.formats.zarr_ import ShardWriter

    store = open_store(layouts["many"])
    array, whole = store.array, np.asarray(open_store(layouts["one"]).array)
    s = array.shard_steps
    outputs = [array[[0, s, s + 1]], take_fields(array, [1, s], [0, 2]), block_reader(store)(s - 2, s + 3)]
    writer = ShardWriter(tmp_path / "data", store.shape, store.dtype, s)
    writer.write(0, whole[:4])
    outputs.append(writer.read(1, 3))
    writer.close()
    assert all(out.ctypes.data % mmap.PAGESIZE == 0 for out in outputs)
    np.testing.assert_array_equal(outputs[0], whole[[0, s, s + 1]])
    np.testing.assert_array_equal(outputs[1], whole[[1, s]][:, [0, 2]])
    np.testing.assert_array_equal(outputs[2], whole[s - 2 : s + 3])
    np.testing.assert_array_equal(outputs[3], whole[1:4])


def test_copy_windows_fills_each_row_with_its_steps_over_one_shard_and_across_shards(layouts):
    from canonstore.formats.shards import copy_windows

    whole = np.asarray(open_store(layouts["one"]).array)
    for name in ("one", "many"):  # a memmap, a ShardedArray
        array = open_store(layouts[name]).array
        across = [array.shard_steps - 2, array.shard_steps - 1] if name == "many" else []  # across a shard's end
        starts = np.array([0, 5, *across, len(whole) - 3])
        step = whole[0].size
        out = np.full((starts.size, 3 * step + 7), np.nan, np.float32)  # rows apart: 7 more values after each
        copy_windows(array, starts, 3, out[:, : 3 * step])
        for k, a in enumerate(starts):
            np.testing.assert_array_equal(out[k, : 3 * step], whole[a : a + 3].reshape(-1))
        assert np.isnan(out[:, 3 * step :]).all()  # nothing written past a row
        with pytest.raises(IndexError, match="out of range"):
            copy_windows(array, np.array([len(whole) - 2]), 3, out[:1, : 3 * step])
        ones = np.full((starts.size, step + 7), np.nan, np.float32)  # windows of one step: each row a step
        copy_windows(array, starts, 1, ones[:, :step])
        np.testing.assert_array_equal(ones[:, :step], whole[starts].reshape(starts.size, -1))
        assert np.isnan(ones[:, step:]).all()
        wider = np.zeros((starts.size, 3 * step))  # float64: converted as np.copyto does, not assigned raw
        copy_windows(array, starts, 3, wider)
        np.testing.assert_array_equal(wider, out[:, : 3 * step].astype(np.float64))
        with pytest.raises(TypeError, match="same_kind"):  # np.copyto's casting rule: no silent float -> int
            copy_windows(array, starts, 3, np.zeros((starts.size, 3 * step), np.int32))
        with pytest.raises(ValueError, match="longer"):  # a row for every window, not the first few filled
            copy_windows(array, starts, 3, out[:-1, : 3 * step])
    mapped = open_store(layouts["one"]).array
    for strided in (mapped[::2], mapped[::-1], mapped[:, 1:]):  # memmaps whose steps are not one run of bytes
        view = np.asarray(strided)
        starts = np.array([0, 1, len(view) - 3])
        out = np.zeros((starts.size, 3 * view[0].size), np.float32)
        copy_windows(strided, starts, 3, out)
        for k, a in enumerate(starts):
            np.testing.assert_array_equal(out[k], view[a : a + 3].reshape(-1))
