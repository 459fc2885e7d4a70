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
from tests.helpers import t2m_file, write_recipe

SPLITS = {"by": "index", "train": [0, 5], "test": [6, 9]}


def cds_netcdf(path, time_name="valid_time", extra_time_dim=None, axis_t=False):
    """A small file shaped like the CDS's newer ERA5 NetCDF: time is called `valid_time`."""
    times = pd.date_range("2020-01-01", periods=10, freq="6h")
    coords = {
        time_name: (time_name, times if not axis_t else np.arange(10), {"axis": "T"} if axis_t else {}),
        "latitude": [10.0, 0.0],
        "longitude": [0.0, 1.0, 2.0],
    }
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
    build(recipe(tmp_path, path), out, progress=False)
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
    with pytest.raises(
        SourceError,
        match=r"several dimensions look like time \(.*valid_time.*forecast_reference_time"
        r"|several dimensions look like time \(.*forecast_reference_time.*valid_time",
    ):
        open_sources(load_recipe(recipe(tmp_path, path)))
    sources = open_sources(load_recipe(recipe(tmp_path, path, time_dim="valid_time", variables=["t2m"])))
    sources.close()  # naming it settles it (the other dimension then is part of the grid)


def test_the_registry_goes_by_signature_before_suffix(tmp_path):
    from tests.helpers import write_grib, write_nwb

    pytest.importorskip("eccodes")
    pytest.importorskip("pynwb")
    grib = write_grib(tmp_path / "field.dat", [("2t", None, pd.Timestamp("2020-01-01"), 0, np.zeros((5, 8)))])
    nwb = write_nwb(
        tmp_path / "session.h5",
        "s1",
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        np.zeros((10, 2), dtype=np.int16),
    )
    netcdf4 = cds_netcdf(tmp_path / "era5.h5")  # HDF5 too, but no nwb_version
    assert [kind_of(p) for p in (grib, nwb, netcdf4)] == ["grib", "nwb", "netcdf"]


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
    sources = open_sources(
        load_recipe(
            write_recipe(
                tmp_path,
                name="monthly",
                sources=[str(tmp_path / "monthly.nc")],
                splits={"by": "index", "train": [0, 35]},
            )
        )
    )
    assert sources.time.size == 36 and sources.gaps == []
    sources.close()
    daily = pd.date_range("2020-01-01", periods=40, freq="D")
    t2m_file(tmp_path / "gappy.nc", daily[(daily < "2020-01-10") | (daily >= "2020-01-15")])
    sources = open_sources(
        load_recipe(
            write_recipe(
                tmp_path,
                name="gappy",
                sources=[str(tmp_path / "gappy.nc")],
                time_gaps="allow",
                splits={"by": "index", "train": [0, 34]},
            )
        )
    )
    assert sources.gaps == [8]
    sources.close()


def _two_grids(folder, lat_a, lat_b, lon=(0.0, 1.0, 2.0), lon_b=None, lat_units="degrees_north"):
    """a.nc (2000) and b.nc (2001) of `x`, on latitudes `lat_a` and `lat_b` (longitudes `lon`, `lon_b`)."""
    for name, year, lat, lons in (("a", 2000, lat_a, lon), ("b", 2001, lat_b, lon if lon_b is None else lon_b)):
        times = pd.date_range(f"{year}-01-01", periods=4, freq="D")
        values = np.random.default_rng(year).normal(size=(4, len(lat), len(lons))).astype(np.float32)
        xr.Dataset(
            {"x": (("time", "lat", "lon"), values, {"units": "K"})},
            coords={
                "time": times,
                "lat": ("lat", np.asarray(lat), {"units": lat_units}),
                "lon": ("lon", np.asarray(lons), {"units": "degrees_east"}),
            },
        ).to_netcdf(folder / f"{name}.nc")
    return write_recipe(folder, name="grids", sources=["*.nc"], splits={"by": "index", "train": [0, 5], "test": [6, 7]})


def test_latitudes_flipped_between_files_are_called_flipped_even_a_few_ulps_apart(tmp_path):
    """np.linspace from either end: the same latitudes reversed, 7e-15 apart in places, not another convention."""
    north_up, south_up = np.linspace(30, -30, 10), np.linspace(-30, 30, 10)
    assert 0 < np.abs(north_up[::-1] - south_up).max() < 1e-14  # what made the flip go unnoticed
    with pytest.raises(SourceError) as error:
        open_sources(load_recipe(_two_grids(tmp_path, north_up, south_up)))
    message = str(error.value)
    assert "b.nc: variable 'x': coordinate 'lat' is ascending but" in message and "a.nc" in message
    assert "other way round" in message and "sortby('lat')" in message
    assert "longitudes" not in message and "convention" not in message


def test_a_latitude_axis_is_never_said_to_be_another_longitude_convention(tmp_path):
    """Latitudes that are the same set but neither equal nor reversed: a plain difference, named with every digit."""
    lat = np.array([-10.0, 0.0, 10.0, 20.0])
    with pytest.raises(SourceError) as error:
        open_sources(load_recipe(_two_grids(tmp_path, lat, lat[[1, 0, 2, 3]])))
    message = str(error.value)
    assert "coordinate 'lat' differs from" in message and "at index 0 (0.0 vs -10.0, by 10)" in message
    assert "longitudes" not in message and "convention" not in message


def test_grids_a_few_ulps_apart_are_named_with_the_size_of_the_difference(tmp_path):
    lat = np.linspace(-60, 60, 5)
    nudged = lat.copy()
    nudged[1] = np.nextafter(nudged[1], 0)
    with pytest.raises(
        SourceError,
        match=r"coordinate 'lat' differs from .*a.nc.* at index 1 \(-29.999999999999996 "
        r"vs -30.0, by 3.6e-15\)",
    ):
        open_sources(load_recipe(_two_grids(tmp_path, lat, nudged)))


def test_longitudes_in_another_convention_are_still_named_so(tmp_path):
    lat = np.array([0.0, 10.0])
    with pytest.raises(
        SourceError,
        match=r"b.nc: variable 'x': coordinate 'lon' runs -120..120 but .*a.nc.* runs "
        r"0..240 \(the same longitudes, another convention\)",
    ):
        open_sources(load_recipe(_two_grids(tmp_path, lat, lat, lon=(0.0, 120.0, 240.0), lon_b=(-120.0, 0.0, 120.0))))


def test_a_cell_measure_the_file_holds_is_found_for_static(tmp_path):
    """CF `cell_measures: area: areacello` with areacello in the file: xarray makes it a coordinate of tos."""
    area = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]]) * 1e10
    times = pd.date_range("2000-01-01", periods=10, freq="MS")
    values = np.random.default_rng(0).normal(size=(10, 2, 3)).astype(np.float32)
    xr.Dataset(
        {
            "tos": (("time", "lat", "lon"), values, {"units": "degC", "cell_measures": "area: areacello"}),
            "areacello": (("lat", "lon"), area, {"units": "m2"}),
        },
        coords={"time": times, "lat": [0.0, 10.0], "lon": [0.0, 1.0, 2.0]},
    ).to_netcdf(tmp_path / "tos.nc")
    path = write_recipe(tmp_path, name="tos", sources=["tos.nc"], static=["areacello"], splits=SPLITS)
    store = open_store(build(path, tmp_path / "tos.zarr", progress=False).path)
    assert list(store.static) == ["areacello"]
    normalised = (area - area.mean()) / area.std()
    np.testing.assert_allclose(store.static["areacello"], normalised, rtol=1e-5)


def test_a_cell_measure_kept_in_another_file_is_named_with_that_file(real, tmp_path):
    """CMIP5 tas names areacella (cell_measures, associated_files) but keeps it in an fx file."""
    sources = [str(p) for p in sorted((real / "cmip5").glob("*.nc"))[:2]]

    def refusal(static: str) -> str:
        path = write_recipe(
            tmp_path,
            name="tas",
            sources=sources,
            static=[static],
            splits={"by": "index", "train": [0, 300], "test": [400, 599]},
        )
        with pytest.raises(SourceError) as error:
            open_sources(load_recipe(path))
        return str(error.value)

    message = refusal("areacella")
    assert (
        "static variable 'areacella'" in message and "200512-203011.nc names it as a cell measure of 'tas'" in message
    )
    assert "areacella_fx_HadGEM2-ES_rcp85_r0i0p0.nc; add that file to 'sources'" in message
    message = refusal("areacello")  # the ocean's measure asked of an atmosphere file: the one it names is said
    assert "static variable 'areacello'" in message and "cell measure(s) 'areacella' (of 'tas'" in message
    assert "kept in areacella_fx_HadGEM2-ES_rcp85_r0i0p0.nc" in message
