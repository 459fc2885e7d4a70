"""GRIB sources: small ERA5-like files made with ecCodes' own sample templates, decoded by canonstore
and by `xarray.open_dataset(engine="cfgrib")`, and compared."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from canonstore import open_store
from canonstore.errors import SourceError
from canonstore.preprocess import build, load_recipe, open_sources
from tests.helpers import NI, NJ, write_grib, write_recipe

eccodes = pytest.importorskip("eccodes")
pytest.importorskip("cfgrib")

HOURS = pd.date_range("2019-12-31T19:00", "2020-01-02T06:00", freq="h")  # 36 valid times
RUNS = pd.DatetimeIndex(["2019-12-31T18:00", "2020-01-01T06:00", "2020-01-01T18:00"])  # ERA5's 06/18 runs


@pytest.fixture
def era5(tmp_path, monkeypatch):
    """ERA5-like inputs: 2 m temperature (GRIB2, two files by period), temperature on 850 and 500 hPa
    (GRIB1, one file), total precipitation as 1..12 h forecast steps of the 06/18 runs (GRIB2)."""
    monkeypatch.setenv("CANONSTORE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    t2m = [("2t", None, t, 0, 270 + 10 * rng.random((NJ, NI))) for t in HOURS]
    write_grib(raw / "t2m_a.grib", t2m[:18])
    write_grib(raw / "t2m_b.grib", t2m[18:])
    write_grib(
        raw / "t_pl.grib1",
        [("t", lev, t, 0, 230 + 20 * rng.random((NJ, NI))) for t in HOURS for lev in (850, 500)],
        edition=1,
    )
    write_grib(
        raw / "tp.grib", [("tp", None, run, s, 1e-3 * rng.random((NJ, NI))) for run in RUNS for s in range(1, 13)]
    )
    return raw


def recipe_for(tmp_path, raw, **keys):
    keys = {
        "name": "era5",
        "sources": [str(raw / "*")],
        "splits": {"by": "index", "train": [0, 23], "val": [24, 29], "test": [30, 35]},
        **keys,
    }
    return write_recipe(tmp_path, **keys)


def by_cfgrib(path) -> xr.Dataset:
    """What an ERA5 user gets from xarray directly (cfgrib's default time/step dimensions)."""
    return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})


def test_analyses_and_forecast_steps_share_one_valid_time_axis_matching_cfgrib(tmp_path, era5):
    sources = open_sources(load_recipe(recipe_for(tmp_path, era5)))
    try:
        assert sources.time_dim == "valid_time"  # found the CF way, not named in the recipe
        assert [c.name for c in sources.channels] == ["t850", "t500", "t2m", "tp"]
        np.testing.assert_array_equal(sources.time, HOURS.values.astype("datetime64[s]"))
        values = sources.read(0, HOURS.size)
    finally:
        sources.close()
    t2m = xr.concat([by_cfgrib(era5 / "t2m_a.grib").t2m, by_cfgrib(era5 / "t2m_b.grib").t2m], "time")
    np.testing.assert_array_equal(values[:, 2], t2m.values)
    t = by_cfgrib(era5 / "t_pl.grib1").t
    np.testing.assert_array_equal(values[:, 0], t.sel(isobaricInhPa=850).values)
    np.testing.assert_array_equal(values[:, 1], t.sel(isobaricInhPa=500).values)
    tp = by_cfgrib(era5 / "tp.grib").tp  # (run time, step): valid time = time + step
    stacked = tp.stack(v=("time", "step")).transpose("v", ...)
    np.testing.assert_array_equal(stacked.valid_time.values, HOURS.values)
    np.testing.assert_array_equal(values[:, 3], stacked.values)


def test_a_grib_store_normalises_what_cfgrib_decodes(tmp_path, era5):
    out = tmp_path / "era5.zarr"
    build(recipe_for(tmp_path, era5), out, progress=False)
    store = open_store(out)
    t2m = xr.concat([by_cfgrib(era5 / "t2m_a.grib").t2m, by_cfgrib(era5 / "t2m_b.grib").t2m], "time").values
    train = t2m[:24].astype(np.float64)
    i = store.channels.index("t2m")
    expected = (t2m - train.mean()) / train.std()
    np.testing.assert_allclose(np.asarray(store.array[:])[:, i], expected, rtol=0, atol=1e-5)
    assert store.attrs["source_time_dim"] == "valid_time"


def test_index_files_go_to_the_cache_never_beside_read_only_inputs(tmp_path, era5):
    for f in era5.iterdir():
        f.chmod(stat.S_IRUSR | stat.S_IRGRP)
    era5.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        open_sources(load_recipe(recipe_for(tmp_path, era5))).close()
        assert not [f for f in os.listdir(era5) if f.endswith(".idx")]
        assert list((tmp_path / "cache" / "grib-index").glob("*.idx"))
    finally:
        era5.chmod(stat.S_IRWXU)


def test_a_damaged_grib_file_gets_one_line_naming_it(tmp_path, era5):
    data = (era5 / "tp.grib").read_bytes()
    (era5 / "tp.grib").write_bytes(data[: len(data) // 3 + 50])  # inside a message
    with pytest.raises(SourceError) as err:
        open_sources(load_recipe(recipe_for(tmp_path, era5)))
    assert "tp.grib" in str(err.value) and "\n" not in str(err.value)


def overlapping_runs(raw):
    """tp from the 06 and 18 UTC runs, steps 1..18: the 06 UTC run's steps 13..18 fall on the 18 UTC
    run's steps 1..6 (valid 19:00 .. 00:00)."""
    rng = np.random.default_rng(1)
    runs = pd.DatetimeIndex(["2020-01-01T06:00", "2020-01-01T18:00"])
    fields = [("tp", None, run, s, rng.random((NJ, NI))) for run in runs for s in range(1, 19)]
    return write_grib(raw / "tp.grib", fields)


def test_two_runs_at_one_valid_time_are_an_error_naming_file_and_time(tmp_path, monkeypatch):
    monkeypatch.setenv("CANONSTORE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "raw").mkdir()
    path = overlapping_runs(tmp_path / "raw")
    with pytest.raises(SourceError) as err:
        open_sources(load_recipe(recipe_for(tmp_path, tmp_path / "raw", splits={"by": "index", "train": [0, 9]})))
    message = str(err.value)
    assert str(path) in message and "'tp'" in message and "2020-01-01T19:00" in message
    assert "on_duplicate_time: keep_first" in message and "\n" not in message


def test_keep_first_keeps_the_earlier_runs_field_at_each_valid_time(tmp_path, monkeypatch):
    monkeypatch.setenv("CANONSTORE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "raw").mkdir()
    path = overlapping_runs(tmp_path / "raw")
    recipe = recipe_for(
        tmp_path, tmp_path / "raw", on_duplicate_time="keep_first", splits={"by": "index", "train": [0, 9]}
    )
    sources = open_sources(load_recipe(recipe))
    try:
        values = sources.read(0, sources.time.size)[:, 0]
        times = sources.time
    finally:
        sources.close()
    tp = by_cfgrib(path).tp  # (run, step)
    np.testing.assert_array_equal(times, pd.date_range("2020-01-01T07:00", "2020-01-02T12:00", freq="h").values)
    np.testing.assert_array_equal(values, np.concatenate([tp.isel(time=0).values, tp.isel(time=1)[6:].values]))


def test_the_index_cache_is_created_for_its_user_alone(tmp_path, era5):
    """cfgrib's index files are pickles, which run code when loaded: only their user may write them."""
    open_sources(load_recipe(recipe_for(tmp_path, era5))).close()
    folder = tmp_path / "cache" / "grib-index"
    assert list(folder.glob("*.idx")) and stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize(
    "case", ["writable by others", "writable by the group", "another user's", "in a folder others can write to"]
)
def test_an_index_cache_others_could_write_to_is_refused_in_one_line(tmp_path, era5, monkeypatch, case):
    cache = tmp_path / "cache"
    folder = cache / "grib-index"
    folder.mkdir(parents=True)
    if case == "writable by others":
        folder.chmod(0o777)
    elif case == "writable by the group":
        folder.chmod(0o770)
    elif case == "another user's":
        folder.chmod(0o700)
        uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    else:
        folder.chmod(0o700)
        cache.chmod(0o777)  # anyone may rename grib-index and put theirs in its place
    expected = {
        "writable by others": r"it is writable by group or others \(mode 777\)",
        "writable by the group": r"it is writable by group or others \(mode 770\)",
        "another user's": r"it belongs to another user \(uid \d+\)",
        "in a folder others can write to": r"its folder .*cache is writable by group or others without the "
        r"sticky bit",
    }[case]
    with pytest.raises(
        SourceError,
        match=rf"cfgrib's GRIB index cache .*grib-index: {expected}.*; its index files are "
        r"pickles, which run code when loaded: set CANONSTORE_CACHE to a folder only",
    ):
        open_sources(load_recipe(recipe_for(tmp_path, era5)))
    assert not list(folder.glob("*.idx"))
    if case == "in a folder others can write to":
        cache.chmod(0o1777)  # the sticky bit (/tmp): others cannot rename what is ours
        open_sources(load_recipe(recipe_for(tmp_path, era5))).close()
