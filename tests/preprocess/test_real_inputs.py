"""Stores built from real files nobody here wrote (../shared/data/real; skipped when absent)."""

import numpy as np
import pytest
import xarray as xr

from canonstore import open_store
from canonstore.errors import SourceError
from canonstore.preprocess import build
from tests.helpers import write_recipe

silent = {"progress": False}


def _build(tmp_path, **keys):
    recipe = write_recipe(tmp_path, **keys)
    return open_store(build(recipe, tmp_path / f"{keys['name']}.zarr", **silent).path)


def test_eraint_packed_levels_become_nine_channels_matching_xarray(tmp_path, real):
    store = _build(
        tmp_path,
        name="era",
        sources=[str(real / "eraint_uvz.nc")],
        variables=["z", "u", "v"],
        time_dim="month",
        splits={"by": "index", "train": [0, 0], "test": [1, 1]},
    )
    assert store.channels == ["z200", "z500", "z850", "u200", "u500", "u850", "v200", "v500", "v850"]
    assert store.dims == ("time", "channel", "latitude", "longitude") and store.shape == (2, 9, 241, 480)
    with xr.open_dataset(real / "eraint_uvz.nc") as ds:  # xarray's own decoding
        assert ds["z"].encoding["dtype"] == np.int16 and "scale_factor" in ds["z"].encoding
        expected = np.concatenate([ds[v].values for v in ("z", "u", "v")], axis=1)
    physical = store.denormalise(np.asarray(store.array, dtype=np.float64))
    np.testing.assert_allclose(physical, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    assert store.time.tolist() == [1, 7]
    units = xr.open_zarr(store.path)["channel_units"].values
    assert units[0] == "m**2 s**-2" and units[3] == "m s**-1"


def test_canesm5_two_files_noleap_year_splits(tmp_path, real):
    store = _build(
        tmp_path,
        name="canesm5-snow",
        sources=[str(real / "prsn_day_*.nc"), str(real / "snw_day_*.nc")],
        variables=["prsn", "snw"],
        splits={"train": [1991, 2004], "val": [2005, 2007], "test": [2008, 2010], "embargo": 1},
    )
    assert store.channels == ["prsn", "snw"] and store.shape == (7300, 2, 6, 5)
    assert store.attrs["calendar"] == "noleap" and store.time[0].calendar == "noleap"
    years = np.array([t.year for t in store.time])
    assert set(years[store.split_indices("train")]) == set(range(1991, 2005))
    assert set(years[store.split_indices("test")]) == set(range(2008, 2011))
    assert store.split_indices("train").size == 14 * 365 and store.split_indices("val").size == 3 * 365 - 1
    assert (
        xr.open_zarr(store.path)["time"].attrs == {}
        and xr.open_zarr(store.path)["time"].encoding["calendar"] == "noleap"
    )


def test_hadgem_duplicate_step_is_an_error_naming_both_files(tmp_path, real):
    keys = {
        "name": "hadgem",
        "sources": [str(real / "cmip5" / "*.nc")],
        "splits": {"train": [2006, 2199], "val": [2200, 2249], "test": [2250, 2299], "embargo": 1},
    }
    with pytest.raises(SourceError) as err:
        _build(tmp_path, **keys)
    message = str(err.value)
    assert "2099-12-16" in message and "tas" in message
    assert "tas_Amon_HadGEM2-ES_rcp85_r1i1p1_208012-209912.nc" in message
    assert "tas_Amon_HadGEM2-ES_rcp85_r1i1p1_209912-212411.nc" in message
    assert not (tmp_path / "hadgem.zarr").exists()

    store = _build(tmp_path, on_duplicate_time="keep_first", **keys)
    assert store.attrs["calendar"] == "360_day" and store.channels == ["tas"]  # time_bnds is not a channel
    months = [(t.year, t.month) for t in store.time]
    assert len(months) == len(set(months)) == (2299 - 2005) * 12 + 1  # 2005-12 .. 2299-12, once each
    with xr.open_dataset(real / "cmip5" / "tas_Amon_HadGEM2-ES_rcp85_r1i1p1_208012-209912.nc") as first:
        kept = first["tas"].values[-1]  # the first file's 2099-12
    i = months.index((2099, 12))
    np.testing.assert_allclose(store.denormalise(store.array[i : i + 1].astype(float))[0, 0], kept, rtol=1e-6)


def test_nrcan_nan_is_an_error_by_default_and_fills_with_a_mask(tmp_path, real):
    keys = {
        "name": "nrcan",
        "sources": [str(real / "NRCAN_SECan_1981-2010.nc")],
        "splits": {"train": [1981, 2000], "val": [2001, 2005], "test": [2006, 2010]},
    }
    with pytest.raises(
        SourceError,
        match=r"NRCAN_SECan_1981-2010.nc: variable 'tg_mean' \(channel tg_mean\) "
        r"has \d+ NaN or fill values, first at 1981-01-01T00:00",
    ) as err:
        _build(tmp_path, **keys)
    count = int(str(err.value).split("(channel tg_mean) has ")[1].split()[0])
    with xr.open_dataset(real / "NRCAN_SECan_1981-2010.nc") as ds:
        assert count == int(ds["tg_mean"].isnull().sum())
        raw = ds["tg_mean"].values
    store = _build(tmp_path, nan_policy="fill", **keys)
    assert store.mask is not None and store.mask.shape == (3, 84, 276)
    np.testing.assert_array_equal(store.mask[store.channels.index("tg_mean")], ~np.isnan(raw[0]))
    data = store.array[:, store.channels.index("tg_mean")]
    assert np.isfinite(data).all() and np.all(data[:, ~store.mask[0]] == 0)  # filled with the train mean
    assert store.stats["nan_count"][0] == np.isnan(raw[:20]).sum()
    np.testing.assert_allclose(store.stats["mean"][store.channels.index("tg_mean")], np.nanmean(raw[:20]), rtol=1e-6)


def test_cancities_location_dimension_instead_of_a_grid(tmp_path, real):
    store = _build(
        tmp_path,
        name="cities",
        sources=[str(real / "daily_surface_cancities_1990-1993.nc")],
        splits={"train": [1990, 1991], "val": [1992, 1992], "test": [1993, 1993], "embargo": 1},
    )
    assert store.dims == ("time", "channel", "location") and store.shape == (1461, 24, 5)
    ds = xr.open_zarr(store.path)
    assert "Montréal" in ds["location"].values.tolist()
    assert ds["lat"].dims == ("location",)  # non-dimension coords kept
    with xr.open_dataset(real / "daily_surface_cancities_1990-1993.nc") as raw:
        tas = raw["tas"].transpose("time", "location").values
    np.testing.assert_allclose(
        store.denormalise(store.array.astype(float))[:, store.channels.index("tas")], tas, rtol=1e-6
    )
