"""The sources' metadata in the store (CF names, global attributes), the physical view, and NetCDF out of both."""

import json

import numpy as np
import pytest
import xarray as xr

from canonstore.formats import open_store
from canonstore.preprocess import build
from tests.helpers import REAL, write_recipe

PRSN = "prsn_day_CanESM5_historical_r1i1p1f1_gn_19910101-20101231.nc"
SNW = "snw_day_CanESM5_historical_r1i1p1f1_gn_19910101-20101231.nc"


@pytest.fixture(scope="module")
def cmip_store(tmp_path_factory):
    if not REAL.is_dir():
        pytest.skip(f"real NetCDF samples not found at {REAL}")
    folder = tmp_path_factory.mktemp("cmip")
    real = REAL
    recipe = write_recipe(
        folder,
        name="canesm5",
        sources=[str(real / PRSN), str(real / SNW)],
        splits={"train": [1991, 2004], "test": [2005, 2010]},
    )
    return open_store(build(recipe, folder / "canesm5.zarr", progress=False).path)


def test_cmip6_licence_and_cf_names_survive_into_the_store(cmip_store, real):
    with xr.open_dataset(real / PRSN) as prsn, xr.open_dataset(real / SNW) as snw:
        licence, standard = prsn.attrs["license"], (prsn["prsn"].attrs["standard_name"], snw["snw"].attrs)
        tracking = [prsn.attrs["tracking_id"], snw.attrs["tracking_id"]]
    kept = cmip_store.attrs["source_attributes"]
    assert kept["license"] == licence and kept["institution_id"] == "CCCma"  # both files agree: the value
    assert kept["tracking_id"] == tracking  # each file its own: every value, in input order, none dropped
    ds = xr.open_zarr(cmip_store.path)  # plain xarray shows them on the Dataset
    assert ds.attrs["license"] == licence and ds.attrs["tracking_id"] == "; ".join(tracking)
    channels = list(ds["channel"].values)
    assert ds["channel_standard_name"].values[channels.index("prsn")] == standard[0]
    assert ds["channel_long_name"].values[channels.index("snw")] == standard[1]["long_name"]


def test_the_physical_view_has_each_channels_values_and_cf_attributes(cmip_store, real):
    physical = cmip_store.to_xarray(physical=True)
    assert set(physical.data_vars) == {"prsn", "snw"} and physical["prsn"].dims == ("time", "lat", "lon")
    with xr.open_dataset(real / PRSN) as prsn:
        raw = prsn["prsn"]
        attrs = raw.attrs
        np.testing.assert_allclose(
            physical["prsn"].isel(time=slice(0, 50)).values, raw.isel(time=slice(0, 50)).values, rtol=1e-5, atol=1e-9
        )
    assert (
        physical["prsn"].attrs["units"] == attrs["units"] and physical["prsn"].attrs["long_name"] == attrs["long_name"]
    )
    assert physical.attrs["license"].startswith("CMIP6 model data") and "split" in physical.coords


def test_an_opened_store_writes_to_netcdf_and_reads_back(cmip_store, tmp_path):
    """It failed with a TypeError: the root's `canonstore` attribute is a nested object netCDF cannot hold."""
    ds = cmip_store.to_xarray()
    ds.isel(time=slice(0, 10)).to_netcdf(tmp_path / "store.nc")
    cmip_store.to_xarray(physical=True).isel(time=slice(0, 10)).to_netcdf(tmp_path / "physical.nc")
    with xr.open_dataset(tmp_path / "store.nc") as back:
        assert json.loads(back.attrs["canonstore"])["name"] == "canesm5"
        assert json.loads(back["data"].attrs["labels"])["channel"] == cmip_store.channels
        np.testing.assert_array_equal(back["data"].values, cmip_store.array[:10])
    with xr.open_dataset(tmp_path / "physical.nc") as back:
        assert back["prsn"].attrs["standard_name"] == "snowfall_flux" and back.attrs["license"].startswith("CMIP6")


def test_a_second_zarr_implementation_reads_the_new_labels(cmip_store):
    ts = pytest.importorskip("tensorstore")
    data = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(cmip_store.path / "data")}}).result()
    labels = json.loads((cmip_store.path / "data" / "zarr.json").read_text())["attributes"]["labels"]
    assert tuple(data.shape) == cmip_store.shape
    assert labels["channel_standard_name"][cmip_store.channels.index("prsn")] == "snowfall_flux"
    assert len(labels["channel_long_name"]) == len(cmip_store.channels)
    root = json.loads((cmip_store.path / "zarr.json").read_text())["attributes"]
    assert root["license"].startswith("CMIP6") and root["canonstore"]["source_attributes"]["license"] == root["license"]


def test_filled_values_are_nan_again_in_the_physical_view_and_the_netcdf_export(gappy_store, tmp_path):
    """A filled value (the train mean) came out of the physical view and the NetCDF export as an observation."""
    from canonstore.formats.netcdf_export import export_netcdf
    from tests.helpers import gappy_values

    store = open_store(gappy_store)
    raw = gappy_values(store.shape[0])[:, 0]
    physical = store.to_xarray(physical=True)
    np.testing.assert_array_equal(np.isnan(physical["x"].values), np.isnan(raw))
    np.testing.assert_allclose(physical["x"].values, raw, rtol=1e-5, atol=1e-5)  # NaN where raw is NaN
    out = export_netcdf(gappy_store, tmp_path / "nc")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "canonstore netcdf export 1" and "normalisation" not in meta
    with xr.open_dataset(out / "test.nc") as test:
        steps = store.split_indices("test")
        np.testing.assert_array_equal(np.isnan(test["x"].values), np.isnan(raw[steps]))
