"""Export a store as NetCDF files, for tools that read only NetCDF: each split in physical units with CF attributes.

    canonstore export data/intermediate/demo.zarr --to netcdf data/export/demo-nc
    # -> train.nc, val.nc, test.nc: t2m(time, latitude, longitude), z500, ... in their units; meta.json

Each file is the split's steps of `Store.to_xarray(physical=True)`: one variable per channel, de-normalised,
with the sources' `units`, `long_name`, `standard_name` and global attributes (`license`, ...), streamed a
shard of steps at a time. Like the .npy export (`formats.npy`: the same checks, staging and meta.json), the
folder appears by one rename when complete, and `--overwrite` replaces only an earlier export.
"""

from __future__ import annotations

import logging
from pathlib import Path

from canonstore._progress import progress as progress_bar
from canonstore.atomic import remove_tree
from canonstore.formats.npy import begin_export, export_meta, finish_export
from canonstore.formats.store import open_store
from canonstore.splits import SPLITS

logger = logging.getLogger(__name__)


def export_netcdf(store_path: str | Path, out: str | Path, overwrite: bool = False, progress: bool = False) -> Path:
    """Write STORE's train/val/test steps to `out`/<split>.nc (physical units) plus `out`/meta.json; return `out`."""
    store, out = open_store(store_path), Path(out)
    staging = begin_export(store, out, overwrite)
    try:
        shard = int(store.attrs["layout"].get("shard_steps") or store.shape[0])
        physical = store.to_xarray(physical=True, chunks={"time": shard})  # dask chunks of whole shards
        files = {}
        with progress_bar(len(SPLITS), "export netcdf", "split", enabled=progress) as bar:
            for split in SPLITS:
                steps = store.split_indices(split)
                path = staging / f"{split}.nc"
                physical.isel(time=steps).to_netcdf(path, format="NETCDF4")
                files[split] = {
                    "file": path.name,
                    "shape": [int(steps.size), *store.shape[2:]],
                    "steps": steps.tolist(),
                }
                logger.info(f"{split}: {steps.size} steps -> {out / path.name} (physical units)")
                bar.update(1)
        meta = export_meta(store, files, {}, kind="netcdf")
        for key in ("normalisation", "dtype", "order"):  # the .npy export's: these values are physical already
            meta.pop(key)
        meta["values"] = "physical units, one variable per channel (its units attribute); NaN where a value was filled"
        finish_export(staging, out, meta)
    except BaseException:
        if staging.is_dir():
            remove_tree(staging)
        raise
    return out
