"""Format 2 shards: every reader sees the same bits for 1, 2 and many shards, and `Store.array`
indexes like the NumPy array it replaces while mapping a bounded number of shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from canonstore import open_store
from canonstore.errors import StoreError
from canonstore.formats.shards import ShardedArray, take_rows
from canonstore.preprocess import build
from canonstore.preprocess.append import append
from tests.conftest import demo_recipe

quiet = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def layouts(tiny_raw, tiny_store, tmp_path_factory) -> dict:
    """The tiny demo as one shard, two shards (the second partial) and many (the session's tiny store)."""
    folder = tmp_path_factory.mktemp("layouts")
    stores = {"many": tiny_store}
    for name, shard_mb in (("one", 1024), ("two", 20)):
        (folder / name).mkdir()
        stores[name] = build(demo_recipe(folder / name, tiny_raw, storage={"shard_mb": shard_mb}),
                             folder / name / "demo.zarr", **quiet).path
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
        index = np.frombuffer(raw[-(16 * steps + 4):-4], "<u8").reshape(steps, 2)
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
    assert np.shares_memory(array[3:9], array.shard(0))              # inside one shard: a view
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
    for name in ("one", "many"):                                       # a memmap, a ShardedArray
        array = open_store(layouts[name]).array
        whole = np.asarray(array).reshape(-1, int(np.prod(array.shape[2:])))     # (step x channel) rows
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
        append(out, recipe, **quiet)
    logs = []
    assert build(recipe, out, progress=False, log=logs.append).built  # not up to date: a full rebuild to version 2
    assert open_store(out).attrs["format_version"] == 2
