"""A store as xarray shows it to other tools: nested attributes as JSON text, or one physical variable per channel.

    ds = open_store("demo.zarr").to_xarray()                  # what xr.open_zarr gives; ds.to_netcdf(...) works
    ds = open_store("demo.zarr").to_xarray(physical=True)     # t2m, z500, ...: de-normalised, with CF attributes

netCDF attributes cannot nest, so the root's `canonstore` object and `data`'s `labels` (FORMAT.md) become JSON
text (`json.loads` gives them back). The physical view undoes the normalisation lazily (`x * scale + mean`,
FORMAT.md "Normalisation") and gives each channel its units and the sources' `long_name` and `standard_name`,
and the Dataset the sources' global attributes (`license`, `institution`, ...).
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from canonstore.formats.spec import mask_channel_of, normalisation_scale

CHANNEL_ATTRS = {"units": "channel_units", "long_name": "channel_long_name", "standard_name": "channel_standard_name"}


def as_netcdf_ready(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with every dict- or list-of-dict-valued attribute as JSON text, and string labels as plain objects."""

    def flat(attrs: dict) -> dict:
        return {k: json.dumps(v) if isinstance(v, (dict, list)) and _nested(v) else v for k, v in attrs.items()}

    ds = ds.copy()
    ds.attrs = flat(ds.attrs)
    for name in ds.variables:
        ds[name].attrs = flat(ds[name].attrs)
        if ds[name].dtype.kind in "TO":  # labels (numpy's StringDType): small, loaded, as the object strings
            labels = ds[name].variable.compute().astype(object)  # netCDF4 writes, without a warning per array
            ds = ds.assign_coords({name: labels}) if name in ds.coords else ds.assign({name: labels})
    return ds


def _nested(value) -> bool:
    return isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in value)


def physical_view(ds: xr.Dataset, mean: np.ndarray, std: np.ndarray) -> xr.Dataset:
    """One variable per channel of `ds` (a store as `as_netcdf_ready` gives it), in physical units (float32,
    lazy), dims (time, *space), NaN where a value was filled (`mask` 0, or its `<channel>_valid` channel 0), with
    `split` as a coordinate; static fields de-normalised alike."""
    scale = normalisation_scale(std)
    channel_coords = [c for c in ds.coords if "channel" in ds[c].dims]
    names = [str(n) for n in ds["channel"].values]
    valid_of = mask_channel_of(names)  # a filled value is no observation: NaN again, as in the sources

    def channel(c: int) -> xr.DataArray:
        return ds["data"].isel(channel=c, drop=True).drop_vars(channel_coords, errors="ignore") * scale[c] + mean[c]

    out = {}
    for c, name in enumerate(names):
        values = channel(c)
        if "mask" in ds:
            values = values.where(ds["mask"].isel(channel=c, drop=True).drop_vars(channel_coords, errors="ignore") > 0)
        if name in valid_of:
            values = values.where(channel(names.index(valid_of[name])) > 0.5)
        attrs = {key: str(ds[coord].values[c]) for key, coord in CHANNEL_ATTRS.items() if coord in ds}
        level = float(ds["channel_level"].values[c]) if "channel_level" in ds else np.nan
        if not np.isnan(level):
            attrs["level_hPa"] = level
        out[name] = values.astype(np.float32).assign_attrs({k: v for k, v in attrs.items() if v})
    if "static" in ds:
        for s, name in enumerate(str(n) for n in ds["static_channel"].values):
            static = ds["static"].isel(static_channel=s, drop=True) * ds["static_std"].values[s]
            static = static.drop_vars([c for c in ds.coords if "static_channel" in ds[c].dims], errors="ignore")
            out[name] = (
                (static + ds["static_mean"].values[s])
                .astype(np.float32)
                .assign_attrs(units=str(ds["static_units"].values[s]))
            )
    result = xr.Dataset(out, attrs=ds.attrs)
    return result.assign_coords(split=ds["split"]) if "split" in ds else result
