"""Opening and checking sources, with tiny files made in the test."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from canonstore import open_store
from canonstore.errors import SourceError
from canonstore.preprocess import build, load_recipe, open_sources
from tests.helpers import days, nc, write_recipe

SPLITS = {"train": [2000, 2000], "test": [2001, 2001]}


def sources_of(tmp_path, **keys):
    keys.setdefault("splits", SPLITS)
    return open_sources(load_recipe(write_recipe(tmp_path, **keys)))


def test_files_are_joined_in_time_order_whatever_their_names(tmp_path):
    nc(tmp_path / "a.nc", days("2001-01-01", 365))
    nc(tmp_path / "b.nc", days("2000-01-01", 366))
    src = sources_of(tmp_path, sources=["*.nc"])
    assert src.time[0] == np.datetime64("2000-01-01") and src.time.size == 731
    np.testing.assert_allclose(src.read(365, 366)[:, 0], xr.open_dataset(tmp_path / "b.nc")["x"].values[365:])
    np.testing.assert_allclose(src.read(366, 367)[:, 0], xr.open_dataset(tmp_path / "a.nc")["x"].values[:1])


def test_unsorted_and_duplicated_times_inside_a_file(tmp_path):
    nc(tmp_path / "u.nc", pd.DatetimeIndex(["2000-01-02", "2000-01-01", "2000-01-03"]))
    with pytest.raises(SourceError, match=r"u.nc: variable 'x': time is not sorted at steps 0 and 1"):
        sources_of(tmp_path, sources=["u.nc"])
    nc(tmp_path / "d.nc", pd.DatetimeIndex(["2000-01-01", "2000-01-02", "2000-01-02"]))
    with pytest.raises(SourceError, match=r"d.nc: variable 'x': time is duplicated at steps 1 and 2"):
        sources_of(tmp_path, sources=["d.nc"])


def test_overlapping_files_without_identical_steps_are_refused(tmp_path):
    nc(tmp_path / "a.nc", days("2000-01-01", 10))
    nc(tmp_path / "b.nc", pd.date_range("2000-01-05T12:00", periods=10, freq="D"))
    with pytest.raises(SourceError, match="the files overlap"):
        sources_of(tmp_path, sources=["*.nc"], on_duplicate_time="keep_first")


def test_grid_values_must_match_across_files(tmp_path):
    nc(tmp_path / "a.nc", days("2000-01-01", 366))
    nc(tmp_path / "b.nc", days("2001-01-01", 365), lat=(0.0, 1.5))  # another grid
    with pytest.raises(SourceError, match=r"b.nc: variable 'x': coordinate 'lat' differs from .*a.nc"):
        sources_of(tmp_path, sources=["*.nc"])


def test_mixed_calendars_and_units_are_refused(tmp_path):
    nc(tmp_path / "a.nc", days("2000-01-01", 366), calendar="proleptic_gregorian")
    nc(tmp_path / "b.nc", pd.date_range("2001-01-01", periods=365, freq="D"), calendar="standard")
    with pytest.raises(SourceError, match="sources mix calendars"):
        sources_of(tmp_path, sources=["*.nc"])
    nc(tmp_path / "b.nc", days("2001-01-01", 365), units="degC", calendar="proleptic_gregorian")
    with pytest.raises(SourceError, match="variable 'x' has different units across files"):
        sources_of(tmp_path, sources=["*.nc"])


def test_levels_in_pa_name_channels_in_hpa_and_select(tmp_path):
    nc(tmp_path / "p.nc", days("2000-01-01", 731), var="t", level=("plev", [85000, 50000], "Pa"))
    src = sources_of(tmp_path, sources=["p.nc"])
    assert [c.name for c in src.channels] == ["t850", "t500"]
    src = sources_of(tmp_path, sources=["p.nc"], levels={"t": [500]})
    assert [(c.name, c.level) for c in src.channels] == [("t500", 500.0)]
    with pytest.raises(SourceError, match=r"variable 't' has no level 700 .*available .*\[850.0, 500.0\]"):
        sources_of(tmp_path, sources=["p.nc"], levels={"t": [700]})


def test_time_varying_nan_pattern_becomes_a_mask_channel(tmp_path):
    values = np.random.default_rng(0).normal(size=(731, 2, 3))
    values[::7, 0, 1] = np.nan  # a station that reports irregularly
    nc(tmp_path / "gappy.nc", days("2000-01-01", 731), values=values)
    recipe = write_recipe(tmp_path, sources=["gappy.nc"], splits=SPLITS, nan_policy="fill")
    store = open_store(build(recipe, tmp_path / "gappy.zarr", progress=False).path)
    assert store.channels == ["x", "x_valid"] and store.mask is None
    valid = store.array[:, 1, 0, 1] > 0
    np.testing.assert_array_equal(valid, ~np.isnan(values[:, 0, 1]))
    assert np.all(store.array[~valid, 0, 0, 1] == 0) and np.isfinite(store.array).all()
    assert store.stats["nan_count"][0] == np.isnan(values[:366]).sum()


def test_a_constant_train_channel_is_refused_by_name(tmp_path):
    values = np.random.default_rng(0).normal(size=(731, 2, 3))
    values[:366] = 4.0  # constant over the train year
    nc(tmp_path / "flat.nc", days("2000-01-01", 731), values=values)
    recipe = write_recipe(tmp_path, sources=["flat.nc"], splits=SPLITS)
    with pytest.raises(
        SourceError, match=r"flat.nc: variable 'x' \(channel x\) is constant \(4\) over the train split"
    ):
        build(recipe, tmp_path / "flat.zarr", progress=False)
    assert not (tmp_path / "flat.zarr").exists()


def test_allowed_time_gaps_are_reported_and_recorded(tmp_path, said):
    nc(tmp_path / "a.nc", days("2000-01-01", 366))
    nc(tmp_path / "b.nc", days("2001-02-01", 334))  # January 2001 is missing
    recipe = write_recipe(tmp_path, sources=["*.nc"], splits=SPLITS, time_gaps="allow")
    store = open_store(build(recipe, tmp_path / "gaps.zarr", progress=False).path)
    assert any("1 gap(s)" in line and "2000-12-31T00:00" in line for line in said())
    assert store.attrs["time_gaps"] == [["2000-12-31T00:00", "2001-02-01T00:00"]]
    assert store.shape[0] == 366 + 334  # nothing filled in


def test_levels_of_a_variable_ending_in_a_digit_get_a_separator(tmp_path):
    """CMIP6 ozone: `o3` at 1000, 10 and 1 hPa must not become o31000, o310, o31 (o3 at 1 or o31?)."""
    nc(
        tmp_path / "o3.nc",
        days("2000-01-01", 731),
        var="o3",
        level=("plev", [100000.0, 1000.0, 100.0], "Pa"),
        values=np.random.default_rng(0).normal(size=(731, 3, 2, 3)),
    )
    nc(
        tmp_path / "t.nc",
        days("2000-01-01", 731),
        var="t",
        level=("plev", [100000.0, 1000.0, 100.0], "Pa"),
        values=np.random.default_rng(1).normal(size=(731, 3, 2, 3)),
    )
    sources = sources_of(tmp_path, sources=["o3.nc", "t.nc"])
    assert [c.name for c in sources.channels] == ["o3_1000", "o3_10", "o3_1", "t1000", "t10", "t1"]
    assert [(c.variable, c.level) for c in sources.channels[:3]] == [("o3", 1000.0), ("o3", 10.0), ("o3", 1.0)]


def test_standard_calendar_across_2262_builds_with_one_time_type(tmp_path):
    """CMIP6 extensions to 2300: a file past 2262 decodes to cftime by default, the others to datetime64."""
    for name, years in (("a", range(2255, 2262)), ("b", range(2262, 2268))):
        xr.Dataset(
            {
                "x": (
                    ("time", "lat", "lon"),
                    np.random.default_rng(len(years)).normal(size=(len(years), 2, 3)),
                    {"units": "K"},
                )
            },
            coords={
                "time": (
                    "time",
                    [365.25 * (y - 1990) for y in years],
                    {"units": "days since 1990-01-01", "calendar": "standard"},
                ),
                "lat": [0.0, 1.0],
                "lon": [0.0, 1.0, 2.0],
            },
        ).to_netcdf(tmp_path / f"{name}.nc")
    recipe = write_recipe(tmp_path, sources=["*.nc"], splits={"train": [2255, 2262], "test": [2263, 2267]})
    store = open_store(build(recipe, tmp_path / "far.zarr", progress=False).path)
    years = [t.year for t in store.time]
    assert years == list(range(2255, 2268))
    assert [years[i] for i in store.split_indices("test")] == list(range(2263, 2268))


def test_files_that_contribute_nothing_are_reported_by_name(tmp_path, said):
    nc(tmp_path / "a.nc", days("2000-01-01", 731))
    nc(tmp_path / "pr.nc", days("2000-01-01", 731), var="pr", units="kg m-2 s-1")
    recipe = write_recipe(tmp_path, sources=["*.nc"], variables=["x"], splits=SPLITS)
    store = open_store(build(recipe, tmp_path / "x.zarr", progress=False).path)
    assert any("not used: " in line and "pr.nc" in line and "it has pr" in line for line in said())
    assert store.attrs["unused_inputs"] == [{"path": str(tmp_path / "pr.nc"), "variables": ["pr"]}]


FILES = 1000  # 4x the handle limit below


def test_a_thousand_files_build_within_a_small_file_handle_limit(tmp_path):
    """1,000 one-day files build with at most 256 open files, 4x fewer (xarray's file cache keeps 128 open)."""
    import subprocess
    import sys

    import netCDF4

    folder = tmp_path / "many"
    folder.mkdir()
    values = np.random.default_rng(0).normal(size=(FILES, 2, 3)).astype(np.float32)
    for day in range(FILES):
        with netCDF4.Dataset(folder / f"x_{day:04d}.nc", "w") as nc:
            nc.createDimension("time", None)
            nc.createDimension("lat", 2)
            nc.createDimension("lon", 3)
            t = nc.createVariable("time", "i4", ("time",))
            t.units, t.calendar = "days since 2000-01-01", "standard"
            t[:] = [day]
            nc.createVariable("lat", "f4", ("lat",))[:] = [10, 20]
            nc.createVariable("lon", "f4", ("lon",))[:] = [0, 90, 180]
            nc.createVariable("x", "f4", ("time", "lat", "lon"))[:] = values[day : day + 1]
    recipe = write_recipe(tmp_path, name="many", sources=[str(folder / "x_*.nc")], splits={"train": [2000, 2002]})
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
        "from canonstore.preprocess import build; "
        f"build({str(recipe)!r}, {str(tmp_path / 'many.zarr')!r}, progress=False)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    store = open_store(tmp_path / "many.zarr")
    assert store.shape == (FILES, 1, 2, 3) and len(store.attrs["inputs"]) == FILES
    np.testing.assert_allclose(store.denormalise(np.asarray(store.array))[:, 0], values, rtol=1e-6, atol=1e-6)
