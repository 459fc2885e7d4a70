"""NetCDF (classic and NetCDF4/HDF5) sources, opened lazily by xarray, each file with its own decoding.

Each file is decoded on its own, so packing (`scale_factor`/`add_offset`) and fill values may
differ per file. CDS's newer ERA5 NetCDF names time `valid_time`; `timeaxis.find_time_dim` finds it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from canonstore.errors import SourceError
from canonstore.preprocess.registry import first_line, register

SUFFIXES = (".nc", ".nc4", ".cdf", ".netcdf", ".h5", ".hdf5")


def recognises(path: Path, head: bytes) -> bool:
    """NetCDF3 starts with `CDF`, NetCDF4 with the HDF5 signature (NWB files are HDF5 too: see nwb_)."""
    return head[:3] == b"CDF" or head[:8] == b"\x89HDF\r\n\x1a\n" or path.suffix.lower() in SUFFIXES


def open_parts(path: Path, recipe) -> list[xr.Dataset]:
    """The file as one lazy Dataset (NetCDF holds one hypercube per variable, all in one Dataset)."""
    return [_open(path)]


def _open(path: Path) -> xr.Dataset:
    """Open one file lazily with its own decoding (its own packing and fill values)."""
    _check_netcdf3_size(path)
    try:
        with warnings.catch_warnings():
            # Packed ints with a float _FillValue (eraint_uvz.nc) are decoded correctly anyway.
            warnings.filterwarnings("ignore", message=".*_FillValue.*")
            warnings.filterwarnings("ignore", category=xr.SerializationWarning)
            warnings.filterwarnings("ignore", message=r"Variable\(s\) referenced in")  # CMIP bounds, areacella
            # Seconds, not nanoseconds: datetime64[ns] ends in 2262, and xarray would decode a later
            # standard-calendar file to cftime while earlier files stay datetime64 (one axis, two types).
            return xr.open_dataset(
                path,
                engine=_engine(path),
                cache=False,
                decode_coords="all",
                decode_times=xr.coders.CFDatetimeCoder(time_unit="s"),
            )
    except Exception as exc:  # the libraries' messages run over several lines; the first says it
        first = first_line(exc)
        if "did not find a match" in first:
            first = "no NetCDF or HDF5 signature (no installed xarray backend recognises it)"
        raise SourceError(f"{path}: cannot open as NetCDF (damaged, truncated or another format): {first}") from exc


def _engine(path: Path) -> str | None:
    """ "netcdf4" where xarray's own guess would choose it (its first choice, when it can open the file), else
    None (xarray guesses): the guess loads every installed backend first, and cfgrib's import alone took 0.23 s."""
    from xarray.backends.netCDF4_ import NetCDF4BackendEntrypoint

    first = xr.get_options().get("netcdf_engine_order", ("netcdf4",))[0]
    return "netcdf4" if first == "netcdf4" and NetCDF4BackendEntrypoint().guess_can_open(path) else None


def _check_netcdf3_size(path: Path) -> None:
    """Refuse a truncated classic-format (NetCDF3) file, which the library reads as zeros without error.

    The data the header describes must fit in the file; this misses only cuts smaller than the header.
    """
    import netCDF4

    with open(path, "rb") as f:
        if f.read(3) != b"CDF":  # NetCDF4/HDF5 files have no such risk; skip the second open
            return
    try:
        with netCDF4.Dataset(path) as nc:
            if not nc.file_format.startswith("NETCDF3"):
                return
            records = {name for name, dim in nc.dimensions.items() if dim.isunlimited()}
            fixed = per_record = 0
            for var in nc.variables.values():
                if var.dimensions and var.dimensions[0] in records:
                    per_record += -(-var.dtype.itemsize * int(np.prod(var.shape[1:])) // 4) * 4
                else:
                    fixed += -(-var.dtype.itemsize * int(np.prod(var.shape)) // 4) * 4
            numrecs = max((len(nc.dimensions[r]) for r in records), default=0)
    except OSError:
        return  # not NetCDF at all: xarray's error above says so
    needed, size = fixed + numrecs * per_record, path.stat().st_size
    if size < needed:
        raise SourceError(
            f"{path}: truncated NetCDF3 file: {size} bytes, but its header describes {needed} bytes "
            "of data (the library would read the missing part as zeros)"
        )


register("netcdf", sys.modules[__name__], fallback=True)
