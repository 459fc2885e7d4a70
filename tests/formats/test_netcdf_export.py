"""`canonstore export STORE --to netcdf DIR`: each split as NetCDF in physical units, read back by xarray alone."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr
from click.testing import CliRunner

from canonstore import open_store
from canonstore.cli import main
from canonstore.formats import npy


def test_each_split_is_a_netcdf_file_in_physical_units(tiny_store, tmp_path):
    out = tmp_path / "nc"
    result = CliRunner().invoke(main, ["export", str(tiny_store), "--to", "netcdf", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    store = open_store(tiny_store)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "canonstore netcdf export 1" and sorted(
        p.name for p in out.iterdir() if p.suffix == ".nc"
    ) == [
        "test.nc",
        "train.nc",
        "val.nc",
    ]
    for split in ("train", "val", "test"):
        steps = store.split_indices(split)
        with xr.open_dataset(out / f"{split}.nc") as ds:
            assert list(ds.data_vars) == store.channels + list(store.static)
            np.testing.assert_array_equal(ds["time"].values, store.time[steps])
            c = store.channels.index("z500")
            expected = store.denormalise(np.asarray(store.array[int(steps[3])]).astype(np.float64)[None])[0, c]
            np.testing.assert_allclose(ds["z500"].isel(time=3).values, expected, rtol=1e-6)
            assert ds["z500"].attrs["units"] == "m**2 s**-2" and ds["z500"].attrs["level_hPa"] == 500.0
            assert meta["splits"][split]["steps"] == steps.tolist()


def test_netcdf_and_npy_exports_replace_each_other_but_nothing_else(tiny_store, tmp_path):
    from canonstore.formats.netcdf_export import export_netcdf

    out = tmp_path / "export"
    npy.export_npy(tiny_store, out)
    export_netcdf(tiny_store, out, overwrite=True)
    assert (out / "train.nc").is_file() and not (out / "train.npy").exists()
    (out / "notes.txt").write_text("mine")  # now the folder holds a file no export wrote
    result = CliRunner().invoke(main, ["export", str(tiny_store), "--to", "npy", str(out), "--overwrite"])
    assert result.exit_code == 1 and "notes.txt" in result.output and (out / "notes.txt").read_text() == "mine"
