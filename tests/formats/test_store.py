"""Reading a store: memory-mapped array, plain xarray/zarr readers, verify, compressed fallback."""

import json
import pickle
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

from canonstore import open_store
from canonstore.cli import main
from canonstore.errors import StoreError
from canonstore.formats import verify_store
from canonstore.preprocess import build
from tests.helpers import demo_recipe


def test_array_is_a_zero_copy_memmap_equal_to_zarr_bit_for_bit(tiny_store):
    store = open_store(tiny_store)
    decoded = zarr.open_array(tiny_store / "data", mode="r")
    array = store.array
    assert array.shards > 8  # the tiny store has many shards (shard_mb 1): the mapped path below is the sharded one
    for i in (0, 1, 777, store.shape[0] - 1):
        sample = array[i]
        assert sample.tobytes() == decoded[i].tobytes()
        assert np.shares_memory(sample, array.shard(i // array.shard_steps)) and isinstance(sample, np.memmap)
    assert store.array.shape == store.shape == tuple(decoded.shape)


def test_plain_xarray_gives_the_same_labelled_values(tiny_store):
    store = open_store(tiny_store)
    ds = xr.open_zarr(tiny_store)  # no canonstore involved
    assert ds["data"].dims == ("time", "channel", "latitude", "longitude")
    assert list(ds["channel"].values) == store.channels
    np.testing.assert_array_equal(ds["data"].isel(time=slice(100, 110)).values, store.array[100:110])
    np.testing.assert_array_equal(ds["time"].values, store.time)
    np.testing.assert_array_equal(ds["stats_mean"].values, store.stats["mean"])
    assert ds["split"].attrs["flag_meanings"] == "train val test excluded"
    assert set(ds["static_channel"].values) == {"lsm", "orography"}
    assert ds.attrs["canonstore"]["format_version"] == 2


def test_stats_splits_and_provenance(tiny_store):
    store = open_store(tiny_store)
    assert set(store.stats) == {"mean", "std", "min", "max", "count", "nan_count", "sum", "sum_sq"}
    assert all(v.dtype.kind in "fi" and v.shape == (17,) for v in store.stats.values())
    assert store.stats["mean"].dtype == np.float64
    train, val, test = (store.split_indices(n) for n in ("train", "val", "test"))
    assert train.max() < val.min() and val.max() < test.min()
    assert val.min() - train.max() == 3  # embargo of 2 steps
    assert store.stats["count"][0] == train.size * 8 * 16
    attrs = store.attrs
    assert attrs["recipe"].startswith("name: demo") and len(attrs["recipe_sha256"]) == 64
    assert all({"path", "size", "sha256"} <= set(i) for i in attrs["inputs"]) and len(attrs["inputs"]) == 7 * 3 + 1
    assert {"python", "numpy", "xarray", "zarr"} <= set(attrs["tools"])
    assert "created" in attrs and "git_commit" in attrs and attrs["canonstore_version"]


def test_unknown_split_name_lists_the_valid_ones(tiny_store):
    with pytest.raises(ValueError, match=r"unknown split 'validation'; valid names are \['train', 'val', 'test'\]"):
        open_store(tiny_store).split_indices("validation")


def test_to_xarray_is_lazy_and_labelled(tiny_store):
    ds = open_store(tiny_store).to_xarray()
    assert ds["data"].chunks is not None
    assert float(ds["data"].sel(channel="z500").isel(time=0).mean()) == pytest.approx(
        float(open_store(tiny_store).array[0, open_store(tiny_store).channels.index("z500")].mean()), rel=1e-6
    )


@pytest.mark.parametrize("target", ["data/c/0/0/0/0", "stats_mean/c/0", "split/c/0", "zarr.json"])
def test_verify_detects_a_flipped_byte(tmp_path, tiny_store, target):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    assert verify_store(copy) == []
    path = copy / target
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    path.write_bytes(bytes(raw))
    problems = verify_store(copy)
    assert any(target in p and "sha256" in p for p in problems), problems


def test_verify_counts_missing_files(tmp_path, tiny_store):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    (copy / "split" / "c" / "0").unlink()
    assert any("split/c/0: listed in the manifest but missing" in p for p in verify_store(copy))


def test_compressed_store_falls_back_to_decoding(tmp_path, tiny_raw, tiny_store):
    recipe = demo_recipe(tmp_path, tiny_raw, storage={"compression": "zstd", "shard_mb": 1})
    packed = open_store(build(recipe, tmp_path / "zstd.zarr", progress=False).path)
    plain = open_store(tiny_store)
    assert not isinstance(packed.array, np.ndarray)  # a zarr array: decodes on read
    np.testing.assert_array_equal(packed.array[5:9], plain.array[5:9])
    np.testing.assert_array_equal(xr.open_zarr(packed.path)["data"][:3].values, plain.array[:3])
    assert verify_store(packed.path) == []


def test_open_store_errors_are_clear(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3)
    (tmp_path / "other.zarr" / "manifest.json").write_text(json.dumps({}))
    with pytest.raises(StoreError, match="not a canonstore store"):
        open_store(tmp_path / "other.zarr")


def test_a_second_zarr_implementation_reads_values_and_labels(tiny_store):
    """tensorstore (C++) reads `data` and the JSON labels; it refuses zarr-python's string arrays,
    which is why the labels are also in `data`'s attributes."""
    ts = pytest.importorskip("tensorstore")
    store = open_store(tiny_store)
    data = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tiny_store / "data")}}, read=True
    ).result()
    assert tuple(data.shape) == store.shape and data.domain.labels == store.dims
    np.testing.assert_array_equal(data[5:9].read().result(), store.array[5:9])
    labels = json.loads((tiny_store / "data" / "zarr.json").read_text())["attributes"]["labels"]
    assert labels["channel"] == store.channels and labels["dims"] == list(store.dims)
    assert labels["static_channel"] == list(store.static) and labels["latitude"] == "latitude"
    assert labels["channel_units"][store.channels.index("z500")] == "m**2 s**-2"
    assert labels["channel_level"][store.channels.index("z500")] == 500.0
    time = (
        ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tiny_store / "time")}}, read=True)
        .result()
        .read()
        .result()
    )
    decoded = xr.coding.times.decode_cf_datetime(time, labels["time"]["units"], labels["time"]["calendar"])
    assert np.array_equal(decoded, store.time)


def test_longitude_periodic_is_recorded_and_derived_for_older_stores(tiny_store, nrcan_store):
    """Recorded at build time beside latitude/longitude (root attrs and data's labels); a store built before
    it was recorded derives it from the longitude's values."""
    import json

    for path, periodic in ((tiny_store, True), (nrcan_store, False)):  # demo 0..360 global; NRCAN -83..-60
        store = open_store(path)
        labels = json.loads((path / "data" / "zarr.json").read_text())["attributes"]["labels"]
        assert store.attrs["longitude_periodic"] is periodic and labels["longitude_periodic"] is periodic
        assert store.longitude_periodic is periodic
        older = open_store(path)
        del older.attrs["longitude_periodic"]
        assert older.longitude_periodic is periodic


def test_a_store_opened_before_a_rebuild_reads_that_store_or_says_it_was_rebuilt(tiny_raw, tmp_path):
    silent = {"progress": False}
    out = build(demo_recipe(tmp_path, tiny_raw), tmp_path / "demo.zarr", **silent).path
    old, mean_before = open_store(out), open_store(out).stats["mean"]
    array, lazy = old.array, old.to_xarray()  # several shards, the first one mapped
    first = np.array(array[0])
    worker_copy = pickle.dumps(array)  # what a DataLoader worker receives
    # a shorter train year: other statistics, so other normalised values in every shard
    build(demo_recipe(tmp_path, tiny_raw, time={"start": "2000-03-01", "end": "2002-12-31"}), out, **silent)
    assert not np.array_equal(open_store(out).stats["mean"], mean_before)
    np.testing.assert_array_equal(array[0], first)  # mapped before the rebuild: the old build's
    reads = {
        "statistics": lambda: old.stats,
        "splits": lambda: old.splits,
        "a shard not mapped yet": lambda: array[5 * array.shard_steps],
        "the xarray view": lambda: lazy["data"][-1].values,
        "a copy in a worker": lambda: pickle.loads(worker_copy)[0],
    }
    for what, read in reads.items():
        with pytest.raises(StoreError, match="was rebuilt or replaced after it was opened"):
            read()
            pytest.fail(f"{what} read from the new build")


def test_a_damaged_zarr_json_is_one_line_naming_it_for_every_reader(tiny_store, tmp_path):
    store = shutil.copytree(tiny_store, tmp_path / "copy.zarr")
    text = (store / "zarr.json").read_text()
    (store / "zarr.json").write_text(text[: len(text) // 2])
    damaged = f"{store / 'zarr.json'}: the store's metadata is damaged (not valid JSON"
    with pytest.raises(StoreError, match=r"copy.zarr/zarr.json: the store's metadata is damaged"):
        open_store(store)
    for args in (["inspect", store], ["export", store, "--to", "npy", tmp_path / "npy"]):
        result = CliRunner().invoke(main, list(map(str, args)))
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and damaged in lines[0], result.output
    result = CliRunner().invoke(main, ["verify", str(store)])
    assert result.exit_code == 1 and "error: zarr.json: size" in result.output and damaged in result.output


@pytest.mark.parametrize("link", ["shard file", "shard folder"])
def test_a_shard_replaced_by_a_link_is_reported_and_never_followed(tiny_store, tmp_path, link):
    store = shutil.copytree(tiny_store, tmp_path / "copy.zarr")
    victim = store / "data" / "c" / "3"
    victim = victim if link == "shard folder" else victim / "0" / "0" / "0"
    copy = shutil.move(victim, tmp_path / "elsewhere")  # the same bytes, outside the store
    victim.symlink_to(copy, target_is_directory=link == "shard folder")
    problems = verify_store(store)
    assert any(p.startswith(f"{victim.relative_to(store)}: a symbolic link") for p in problems), problems
    assert CliRunner().invoke(main, ["verify", str(store)]).exit_code == 1
    opened = open_store(store)
    with pytest.raises(StoreError, match="a symbolic link in the store"):
        opened.array[3 * opened.array.shard_steps]


def test_a_far_future_360_day_store_opens_without_xarrays_cftime_note(tmp_path):
    import warnings

    import xarray as xr

    from tests.helpers import write_recipe

    times = xr.date_range("2290-01-01", periods=120, freq="MS", calendar="360_day", use_cftime=True)
    values = 280 + np.random.default_rng(0).normal(size=(times.size, 2, 3))
    xr.Dataset(
        {"tas": (("time", "lat", "lon"), values, {"units": "K"})},
        coords={"time": times, "lat": [10.0, 20.0], "lon": [0.0, 5.0, 10.0]},
    ).to_netcdf(tmp_path / "tas.nc")
    splits = {"by": "dates", "train": ["2290-01-01", "2297-12-30"], "test": ["2298-01-01", "2299-12-30"]}
    recipe = write_recipe(tmp_path, name="far", sources=["tas.nc"], splits=splits)
    out = build(recipe, tmp_path / "far.zarr", progress=False).path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = open_store(out)
        assert store.time[-1].calendar == "360_day" and store.to_xarray()["time"].size == 120
    assert [str(w.message)[:60] for w in caught if "decode time" in str(w.message)] == []


def test_a_missing_shard_is_an_error_for_to_xarray_not_nan(tmp_path, tiny_store):
    """A shard the manifest lists deleted: `to_xarray()` read its steps as the fill value (NaN) without an error
    (`.array` raises); it names the file and says to verify, as on object storage."""
    store = shutil.copytree(tiny_store, tmp_path / "s.zarr")
    shard = sorted(store.glob("data/c/*/0/0/0"))[1]
    shard.unlink()
    ds = open_store(store).to_xarray()
    with pytest.raises(StoreError, match=rf"{shard}: listed in the manifest but missing.*canonstore verify"):
        ds["data"].load()
    np.testing.assert_array_equal(ds["data"][:1].values, open_store(tiny_store).array[:1])  # the others still read
