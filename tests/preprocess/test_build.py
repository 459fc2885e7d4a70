"""Building the demo store: normalisation from train only, streaming, no-op rebuilds, no partial stores."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from canonstore import open_store
from canonstore.errors import RecipeError, SourceError, StoreError
from canonstore.preprocess import build
from tests.helpers import demo_recipe, gappy_values, write_recipe

silent = {"progress": False}


def test_train_split_is_normalised_per_channel(tiny_store):
    store = open_store(tiny_store)
    train = np.asarray(store.array[store.split_indices("train")], dtype=np.float64)
    per_channel = np.moveaxis(train, 1, 0).reshape(len(store.channels), -1)
    np.testing.assert_allclose(per_channel.mean(axis=1), 0, atol=0.01)
    np.testing.assert_allclose(per_channel.std(axis=1), 1, atol=0.01)
    assert store.channels == [
        "msl",
        "q250",
        "q500",
        "q850",
        "t250",
        "t500",
        "t850",
        "t2m",
        "u250",
        "u500",
        "u850",
        "v250",
        "v500",
        "v850",
        "z250",
        "z500",
        "z850",
    ]


def test_stored_values_denormalise_to_the_raw_values(tiny_store, tiny_raw):
    store = open_store(tiny_store)
    raw = xr.open_dataset(tiny_raw / "z_2001.nc")["z"].sel(level=500).values  # 2001 = val split
    i = int(np.searchsorted(store.time, np.datetime64("2001-01-01")))
    z500 = store.channels.index("z500")
    physical = store.denormalise(np.asarray(store.array[i : i + 10], dtype=np.float64))[:, z500]
    np.testing.assert_allclose(physical, raw[:10], rtol=1e-6)
    # msl is packed int16 in the raw files: the store holds xarray's decoded values
    msl = xr.open_dataset(tiny_raw / "msl_2001.nc")["msl"].values[:10]
    np.testing.assert_allclose(store.denormalise(np.asarray(store.array[i : i + 10], float))[:, 0], msl, rtol=1e-6)


def test_changing_val_and_test_raw_values_changes_no_statistic(tmp_path, tiny_raw, tiny_store):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    for year in (2001, 2002):  # val and test years of the demo recipe
        for path in raw.glob(f"*_{year}.nc"):
            ds = xr.load_dataset(path)
            name = next(iter(ds.data_vars))
            ds[name] = ds[name] * 3 + 7
            encoding = {k: v for k, v in ds[name].encoding.items() if k in ("dtype", "_FillValue")}
            encoding.pop("dtype", None)  # unpacked float32 is fine for this test
            ds.to_netcdf(path, encoding={name: encoding})
    out = build(demo_recipe(tmp_path, raw), tmp_path / "changed.zarr", **silent).path
    before, after = open_store(tiny_store), open_store(out)
    for name, values in before.stats.items():
        np.testing.assert_array_equal(values, after.stats[name], err_msg=name)
    train = before.split_indices("train")
    np.testing.assert_array_equal(before.array[train], after.array[train])
    val = before.split_indices("val")
    assert not np.allclose(before.array[val], after.array[val])


def test_rebuild_is_a_no_op_until_recipe_or_input_changes(tmp_path, tiny_raw, said):
    recipe = demo_recipe(tmp_path, tiny_raw)
    out = tmp_path / "demo.zarr"
    assert build(recipe, out, progress=False).built
    manifest_mtime = (out / "manifest.json").stat().st_mtime_ns
    again = build(recipe, out, progress=False)
    assert not again.built and "up to date" in said()[-1]
    assert (out / "manifest.json").stat().st_mtime_ns == manifest_mtime
    recipe.write_text(recipe.read_text().replace("embargo: 2", "embargo: 3"))
    assert build(recipe, out, **silent).built
    assert open_store(out).attrs["split_rule"]["embargo"] == 3


def test_a_failing_build_leaves_the_previous_store_and_no_partial(tmp_path, tiny_raw):
    out = tmp_path / "demo.zarr"
    build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    checksum = (out / "manifest.json").read_text()
    with pytest.raises(SourceError):
        build(demo_recipe(tmp_path, tiny_raw, variables=["nope"]), out, **silent)
    assert (out / "manifest.json").read_text() == checksum
    assert not out.with_name("demo.zarr.partial").exists()


def test_refuses_to_replace_something_that_is_not_a_store(tmp_path, tiny_raw):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreError, match="exists and is not a canonstore store"):
        build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_a_store_holding_a_users_file_is_not_replaced(tmp_path, tiny_raw):
    out = build(demo_recipe(tmp_path, tiny_raw), tmp_path / "demo.zarr", **silent).path
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(StoreError, match=r"holds files that are not the store's \(notes.txt\)"):
        build(demo_recipe(tmp_path, tiny_raw), out, force=True, **silent)
    assert (out / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize("where", ["notes.txt", "data/notes.txt", "mine/zarr.json"])
def test_a_store_without_its_manifest_holding_a_users_file_is_not_replaced(tmp_path, tiny_raw, where):
    """No manifest says which files are the store's: a file that no Zarr store has (a store's folders hold their
    zarr.json and chunks under c/) was deleted by the rebuild's swap; files of the store's shape alone are replaced."""
    out = build(demo_recipe(tmp_path, tiny_raw), tmp_path / "demo.zarr", **silent).path
    (out / "manifest.json").unlink()
    (out / where).parent.mkdir(exist_ok=True)
    (out / where).write_text("my notes")
    with pytest.raises(
        StoreError, match=f"no readable manifest and holds files that are not a Zarr store's \\({where}"
    ):
        build(demo_recipe(tmp_path, tiny_raw), out, force=True, **silent)
    assert (out / where).read_text() == "my notes"
    (out / where).unlink()
    assert build(demo_recipe(tmp_path, tiny_raw), out, force=True, **silent).built  # its own files: replaced


@pytest.mark.parametrize("what", ["notes", "a copy of a store"])
def test_a_users_folder_named_like_the_staging_is_never_deleted(tmp_path, tiny_raw, tiny_store, what):
    out = tmp_path / "demo.zarr"
    mine = tmp_path / "demo.zarr.partial"
    if what == "notes":
        mine.mkdir()
        (mine / "notes.txt").write_text("my notes")
    else:  # a whole store, but not a staging: it has no marker
        shutil.copytree(tiny_store, mine)
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    with pytest.raises(StoreError, match=f"{mine} exists and is not canonstore's"):
        build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before and not out.exists()


def test_a_users_file_named_like_the_lock_is_never_overwritten(tmp_path, tiny_raw):
    out = tmp_path / "demo.zarr"
    mine = tmp_path / "demo.zarr.lock"
    mine.write_text("my lock-free notes\n")
    with pytest.raises(StoreError, match=f"{mine} exists and is not canonstore's lock file"):
        build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    assert mine.read_text() == "my lock-free notes\n" and not out.exists()
    mine.unlink()
    build(demo_recipe(tmp_path, tiny_raw), out, **silent)  # its own lock file, left by a build, is reused
    assert build(demo_recipe(tmp_path, tiny_raw), out, force=True, **silent).built


@pytest.mark.parametrize("mine", ["file", "link", "folder"])
def test_a_users_file_or_link_named_like_the_log_is_never_written_to(tmp_path, tiny_raw, mine):
    """`<store>.log` was opened to append whatever it was: a user's notes got build lines, a link was followed."""
    out, log, notes = tmp_path / "demo.zarr", tmp_path / "demo.zarr.log", tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    {"file": lambda: log.write_text("my notes\n"), "link": lambda: log.symlink_to(notes), "folder": log.mkdir}[mine]()
    why = "does not begin with '== canonstore'" if mine == "file" else "a link, or not a file"
    with pytest.raises(StoreError, match=f"{log} exists and is not canonstore's build log .*{re.escape(why)}"):
        build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    assert notes.read_text() == "my notes\n" and not out.exists()
    assert log.read_text() == "my notes\n" if mine == "file" else log.is_symlink() or log.is_dir()
    log.rmdir() if mine == "folder" else log.unlink()
    build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    assert build(demo_recipe(tmp_path, tiny_raw), out, force=True, **silent).built  # its own log: appended to
    assert log.read_text().startswith("== canonstore build of") and log.read_text().count("== canonstore build") == 2


def test_build_force_rebuilds_a_store_whose_zarr_json_is_damaged(tmp_path, tiny_raw):
    from click.testing import CliRunner

    from canonstore.cli import main
    from canonstore.formats import verify_store

    recipe = demo_recipe(tmp_path, tiny_raw)
    out = build(recipe, tmp_path / "demo.zarr", **silent).path
    text = (out / "zarr.json").read_text()
    (out / "zarr.json").write_text(text[: len(text) // 2])
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--force", "--quiet"])
    assert result.exit_code == 0, result.output
    assert verify_store(out) == [] and open_store(out).shape[0] > 0


def test_time_range_and_variable_and_level_selection(tmp_path, tiny_raw, said):
    recipe = demo_recipe(
        tmp_path,
        tiny_raw,
        variables=["z", "t2m"],
        levels={"z": [850]},
        static=[],
        time={"start": "2000-03-01", "end": "2002-06-30"},
    )
    store = open_store(build(recipe, tmp_path / "sel.zarr", progress=False).path)
    assert store.channels == ["z850", "t2m"]
    assert said()[0] == "not stored (not in 'variables' or 'static' of the recipe): lsm, msl, orography, q, t, u, v"
    assert store.attrs["ignored_variables"] == ["lsm", "msl", "orography", "q", "t", "u", "v"]
    assert store.time[0] == np.datetime64("2000-03-01T00:00") and store.time[-1] == np.datetime64("2002-06-30T18:00")
    assert store.attrs["layout"]["shape"][0] == len(store.time)


def test_float16_store_round_trips_within_float16_precision(tmp_path, tiny_raw, tiny_store):
    recipe = demo_recipe(tmp_path, tiny_raw, storage={"dtype": "float16", "shard_mb": 1})
    half = open_store(build(recipe, tmp_path / "half.zarr", **silent).path)
    full = open_store(tiny_store)
    assert half.array.dtype == np.float16
    np.testing.assert_allclose(half.array[:50].astype(np.float32), full.array[:50], atol=5e-3)


def test_float16_refuses_a_channel_that_overflows_by_name(tmp_path):
    time = pd.date_range("2000-01-01", periods=4 * 365 * 2, freq="6h")
    values = np.random.default_rng(0).normal(0, 1e-4, size=(time.size, 2, 3)).astype(np.float32)
    values[time.year == 2001] += 1000.0  # far outside the train range once normalised
    xr.Dataset(
        {"spike": (("time", "lat", "lon"), values)}, coords={"time": time, "lat": [0.0, 1.0], "lon": [0.0, 1.0, 2.0]}
    ).to_netcdf(tmp_path / "spike.nc")
    recipe = write_recipe(
        tmp_path,
        sources=["spike.nc"],
        splits={"train": [2000, 2000], "test": [2001, 2001]},
        storage={"dtype": "float16"},
    )
    with pytest.raises(
        SourceError, match=r"spike.nc: variable 'spike' \(channel spike\) at time 2001-01-01T00:00: .*overflows float16"
    ):
        build(recipe, tmp_path / "spike.zarr", **silent)
    assert not (tmp_path / "spike.zarr").exists() and not (tmp_path / "spike.zarr.partial").exists()


def test_unchanged_inputs_are_not_hashed_again_touched_ones_are(tmp_path, tiny_raw, monkeypatch):
    from canonstore.preprocess import inputs as inputs_module

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    recipe = demo_recipe(tmp_path, raw)
    out = tmp_path / "demo.zarr"
    build(recipe, out, **silent)
    hashed = []
    original = inputs_module.file_sha256
    monkeypatch.setattr(inputs_module, "file_sha256", lambda p, **kw: hashed.append(p.name) or original(p, **kw))
    assert not build(recipe, out, **silent).built and hashed == []  # a no-op build reads no input byte
    (raw / "z_2001.nc").touch()  # same bytes, new mtime: hashed, still up to date
    assert not build(recipe, out, **silent).built and hashed == ["z_2001.nc"]
    record = next(i for i in open_store(out).attrs["inputs"] if i["path"].endswith("z_2001.nc"))
    assert {"size", "mtime_ns", "inode", "sha256"} <= set(record)


def test_only_the_selected_levels_are_read_from_the_files(tmp_path, tiny_raw, monkeypatch):
    from canonstore.preprocess.sources import Sources

    shapes = []
    original = Sources._read_variable

    def recorded(self, *args, **kwargs):
        block = original(self, *args, **kwargs)
        shapes.append(block.shape)
        return block

    monkeypatch.setattr(Sources, "_read_variable", recorded)
    recipe = demo_recipe(tmp_path, tiny_raw, variables=["z", "t"], levels={"z": [850, 250], "t": [500]}, static=[])
    store = open_store(build(recipe, tmp_path / "sel.zarr", **silent).path)
    assert store.channels == ["z850", "z250", "t500"]
    assert shapes and {s[1] for s in shapes} <= {1, 2}  # 2 levels of z, 1 of t; the files hold 4 each
    every = open_store(
        build(demo_recipe(tmp_path / "..", tiny_raw, static=[], name="all"), tmp_path / "all.zarr", **silent).path
    )
    for name in store.channels:
        np.testing.assert_array_equal(
            store.denormalise(store.array[:50])[:, store.channels.index(name)],
            every.denormalise(every.array[:50])[:, every.channels.index(name)],
        )


def test_a_step_larger_than_a_block_is_split_across_channels_with_the_same_result(tmp_path, tiny_raw, tiny_store):
    sample_mb = np.prod(open_store(tiny_store).shape[1:]) * 4 / 2**20
    recipe = demo_recipe(tmp_path, tiny_raw, time={"end": "2000-01-31"}, splits={"train": [2000, 2000]})
    whole = open_store(build(recipe, tmp_path / "whole.zarr", **silent).path)
    split = open_store(build(recipe, tmp_path / "split.zarr", block_mb=sample_mb / 5, **silent).path)
    nchan = len(whole.channels)
    assert split.attrs["layout"]["block_channels"] == nchan // 5  # each block: one step, a fifth of its channels
    assert np.asarray(split.array).tobytes() == np.asarray(whole.array).tobytes()
    for name, values in whole.stats.items():
        np.testing.assert_array_equal(split.stats[name], values, err_msg=name)


def test_an_output_that_a_source_glob_reaches_is_refused_before_anything_is_written(tmp_path, tiny_raw):
    """`--out raw/x.zarr` with `sources: [raw/*]`: a rebuild would read x.zarr.lock, .log, .partial as inputs."""
    raw = shutil.copytree(tiny_raw, tmp_path / "raw")
    (tmp_path / "link").symlink_to(raw)
    (raw / "more").mkdir()
    shutil.copy(raw / "static.nc", raw / "more")  # for raw/*/* to match a file
    before = sorted(p.name for p in raw.iterdir())
    for sources, reaching, names in (
        (["raw/*"], "raw/*", "x.zarr.lock, x.zarr.lock.excl, x.zarr.log"),
        (["raw/*.nc", "raw/*/*"], "raw/*/*", "x.zarr, x.zarr.old-<pid>, x.zarr.partial"),
        (["link/*.nc", "link/*"], "link/*", "x.zarr.lock"),
    ):  # via a link
        with pytest.raises(RecipeError) as error:
            build(demo_recipe(tmp_path, raw, sources=sources), raw / "x.zarr", **silent)
        assert f"source '{reaching}' reaches the build's own files for --out {raw / 'x.zarr'}" in str(error.value)
        assert names in str(error.value) and "they would be read as inputs" in str(error.value)
        assert sorted(p.name for p in raw.iterdir()) == before  # no lock, log or staging left there
    narrow = demo_recipe(tmp_path, raw, sources=["raw/*.nc"])  # the same folder, a narrower glob
    assert build(narrow, raw / "x.zarr", **silent).built
    assert (raw / "x.zarr.lock").exists() and (raw / "x.zarr.log").exists()
    assert not build(narrow, raw / "x.zarr", **silent).built  # its own files are not inputs


def test_a_glob_deeper_than_the_output_is_refused_only_when_it_matches_a_file_of_the_build(tmp_path, tiny_raw):
    """`raw/*/*.nc` with `--out raw/x.zarr`: no file of a store, its staging or old copy is *.nc, so it is built,
    and rebuilt; `raw/*/*/*` (a `data/zarr.json`) or `raw/*/time/c/*` are still refused."""
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw / "a")
    for sources in (["raw/*/*.nc"], ["raw/*/static.nc", "raw/*/[a-z]*[0-9].nc"]):
        recipe = demo_recipe(tmp_path, raw, sources=sources)
        assert build(recipe, raw / "x.zarr", force=True, **silent).built
        assert not build(recipe, raw / "x.zarr", **silent).built  # the store now there is not an input
    for reaching in ("raw/*/*/*", "raw/*/time/c/*"):
        with pytest.raises(RecipeError, match=f"source '{re.escape(reaching)}' reaches the build's own files"):
            build(demo_recipe(tmp_path, raw, sources=["raw/*/*.nc", reaching]), raw / "y.zarr", **silent)


@pytest.mark.parametrize("freq", ["MS", "YS"])
def test_a_standard_calendar_monthly_or_yearly_file_builds_without_gaps(tmp_path, freq):
    """Months of 28-31 days (February is 1/1.107 of January) and years of 365-366: steps of 5 days or more keep
    the 50% band, so no step is refused as a finer one and none is a gap."""
    from tests.helpers import t2m_file

    times = pd.date_range("1990-01-01", periods=48 if freq == "MS" else 30, freq=freq)
    t2m_file(tmp_path / "monthly.nc", times)
    recipe = write_recipe(tmp_path, sources=[str(tmp_path / "monthly.nc")], splits={"by": "index", "train": [0, 19]})
    store = open_store(build(recipe, tmp_path / "m.zarr", **silent).path)
    assert store.gaps.tolist() == [] and store.shape[0] == times.size


def test_train_statistics_equal_numpy_where_a_block_mixes_splits_and_fields_have_nans(gappy_store):
    """The scan's NaN checks take each field's min and max once and the statistics reuse them: over the train
    steps only (a block here holds train, val and test steps), NaN fields included."""
    store = open_store(gappy_store)
    times = pd.date_range("2000-01-01", "2002-12-31", freq="D")
    times = times[(times < "2000-07-01") | (times >= "2000-08-01")]
    train = gappy_values(times.size)[store.split_indices("train")]
    assert train.shape[0] < times.size / 2 and np.isnan(train[:, 0]).any()
    for c, name in enumerate(["x", "y"]):
        values = train[:, c]
        at = store.channels.index(name)
        assert store.stats["min"][at] == np.nanmin(values) and store.stats["max"][at] == np.nanmax(values)
        np.testing.assert_allclose(store.stats["mean"][at], np.nanmean(values), rtol=1e-12)
        np.testing.assert_allclose(store.stats["std"][at], np.nanstd(values), rtol=1e-10)


def test_train_statistics_of_float32_sources_staged_in_place_equal_numpy_over_the_train_steps(tiny_store, tiny_raw):
    """The in-place scan (float32 sources) reuses its NaN checks' extremes too: where a shard's block holds the end
    of the train steps and the first val steps, min and max are those of the train steps alone, exactly."""
    store = open_store(tiny_store)
    train = store.split_indices("train")
    assert 0 < train.size < store.shape[0] and store.attrs["layout"]["shards"] > 2
    for name, variable, level in [("t2m", "t2m", None), ("z500", "z", 500)]:
        raw = xr.concat([xr.open_dataset(p)[variable] for p in sorted(tiny_raw.glob(f"{variable}_*.nc"))], "time")
        values = (raw if level is None else raw.sel(level=level)).values[train].astype(np.float64)
        at = store.channels.index(name)
        assert store.stats["min"][at] == values.min() and store.stats["max"][at] == values.max(), name
        np.testing.assert_allclose(store.stats["mean"][at], values.mean(), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(store.stats["std"][at], values.std(), rtol=1e-9, err_msg=name)
