"""What every source kind shares: the registry's choice of module, and the time dimension found the CF way."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from canonstore import open_store
from canonstore.errors import SourceError
from canonstore.preprocess import build, load_recipe, open_sources
from canonstore.preprocess.sources import kind_of
from tests.conftest import write_recipe

SPLITS = {"by": "index", "train": [0, 5], "test": [6, 9]}


def cds_netcdf(path, time_name="valid_time", extra_time_dim=None, axis_t=False):
    """A small file shaped like the CDS's newer ERA5 NetCDF: time is called `valid_time`."""
    times = pd.date_range("2020-01-01", periods=10, freq="6h")
    coords = {time_name: (time_name, times if not axis_t else np.arange(10), {"axis": "T"} if axis_t else {}),
              "latitude": [10.0, 0.0], "longitude": [0.0, 1.0, 2.0]}
    dims, shape = (time_name, "latitude", "longitude"), (10, 2, 3)
    if extra_time_dim:
        coords[extra_time_dim] = (extra_time_dim, pd.date_range("2019-12-31", periods=2, freq="D"))
        dims, shape = (extra_time_dim,) + dims, (2,) + shape
    values = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    xr.Dataset({"t2m": (dims, values, {"units": "K"})}, coords=coords).to_netcdf(path)
    return path


def recipe(tmp_path, path, **keys):
    return write_recipe(tmp_path, name="cf", sources=[str(path)], splits=SPLITS, **keys)


def test_valid_time_is_found_without_time_dim_in_the_recipe(tmp_path):
    path = cds_netcdf(tmp_path / "era5.nc")
    out = tmp_path / "cf.zarr"
    build(recipe(tmp_path, path), out, progress=False, log=lambda *_: None)
    store = open_store(out)
    assert store.attrs["source_time_dim"] == "valid_time"
    np.testing.assert_array_equal(store.time, xr.open_dataset(path).valid_time.values)


def test_a_coordinate_with_axis_T_is_the_time_dimension(tmp_path):
    sources = open_sources(load_recipe(recipe(tmp_path, cds_netcdf(tmp_path / "t.nc", "step", axis_t=True))))
    try:
        assert sources.time_dim == "step" and sources.time.tolist() == list(range(10))
    finally:
        sources.close()


def test_several_time_like_dimensions_are_an_error_naming_them(tmp_path):
    path = cds_netcdf(tmp_path / "fc.nc", extra_time_dim="forecast_reference_time")
    with pytest.raises(SourceError, match=r"several dimensions look like time \(.*valid_time.*forecast_reference_time"
                                          r"|several dimensions look like time \(.*forecast_reference_time.*valid_time"):
        open_sources(load_recipe(recipe(tmp_path, path)))
    sources = open_sources(load_recipe(recipe(tmp_path, path, time_dim="valid_time", variables=["t2m"])))
    sources.close()  # naming it settles it (the other dimension then is part of the grid)


def test_the_registry_goes_by_signature_before_suffix(tmp_path):
    from tests.test_grib_ import write_grib
    from tests.test_nwb_ import write_nwb

    pytest.importorskip("eccodes")
    pytest.importorskip("pynwb")
    grib = write_grib(tmp_path / "field.dat", [("2t", None, pd.Timestamp("2020-01-01"), 0, np.zeros((5, 8)))])
    nwb = write_nwb(tmp_path / "session.h5", "s1", dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
                    np.zeros((10, 2), dtype=np.int16))
    netcdf4 = cds_netcdf(tmp_path / "era5.h5")  # HDF5 too, but no nwb_version
    assert [kind_of(p) for p in (grib, nwb, netcdf4)] == ["grib", "nwb", "netcdf"]


def t2m_file(path, times):
    values = np.random.default_rng(len(times)).normal(size=(len(times), 2, 3)).astype(np.float32)
    xr.Dataset({"t2m": (("time", "lat", "lon"), values, {"units": "K"})},
               coords={"time": times, "lat": [10.0, 0.0], "lon": [0.0, 1.0, 2.0]}).to_netcdf(path)
    return path


def test_a_finer_time_step_is_an_error_naming_the_files_and_times(tmp_path):
    """6-hourly data then 3-hourly data: lead-1 pairs would span 6 h in one part and 3 h in the other."""
    t2m_file(tmp_path / "a.nc", pd.date_range("2020-01-01", periods=60, freq="6h"))
    t2m_file(tmp_path / "b.nc", pd.date_range("2020-01-16", periods=30, freq="3h"))
    keys = {"sources": [str(tmp_path / "*.nc")], "splits": {"by": "index", "train": [0, 59], "test": [60, 89]}}
    for time_gaps in ("error", "allow"):  # never a gap: allowing gaps does not allow it
        with pytest.raises(SourceError) as err:
            open_sources(load_recipe(write_recipe(tmp_path, name="mixed", time_gaps=time_gaps, **keys)))
        message = str(err.value)
        for part in ("3 hours", "usual 6 hours", "2020-01-16T00:00", "2020-01-16T03:00", "b.nc", "one regular"):
            assert part in message, (part, message)
        assert "a.nc" not in message and "\n" not in message


def test_month_lengths_are_one_regular_step_and_larger_steps_stay_gaps(tmp_path):
    monthly = pd.date_range("2019-01-01", periods=36, freq="MS")  # 28 .. 31 days: monthly, not finer
    t2m_file(tmp_path / "monthly.nc", monthly)
    sources = open_sources(load_recipe(write_recipe(tmp_path, name="monthly", sources=[str(tmp_path / "monthly.nc")],
                                                    splits={"by": "index", "train": [0, 35]})))
    assert sources.time.size == 36 and sources.gaps == []
    sources.close()
    daily = pd.date_range("2020-01-01", periods=40, freq="D")
    t2m_file(tmp_path / "gappy.nc", daily[(daily < "2020-01-10") | (daily >= "2020-01-15")])
    sources = open_sources(load_recipe(write_recipe(tmp_path, name="gappy", sources=[str(tmp_path / "gappy.nc")],
                                                    time_gaps="allow", splits={"by": "index", "train": [0, 34]})))
    assert sources.gaps == [8]
    sources.close()
