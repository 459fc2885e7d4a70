"""NWB (Neurodata Without Borders) sources through pynwb: one TimeSeries per file, one file per session.

The recipe names the series (`series: acquisition/ElectricalSeries`; with one series in
`acquisition` it may be left out): any TimeSeries, an ElectricalSeries or a plain one. Values are
in physical units, `data x conversion (x channel_conversion, ElectricalSeries only) + offset`,
read lazily: the HDF5 dataset is sliced per block, never loaded whole. Time is `session_start_time`
plus `timestamps`, or plus `starting_time + i / rate`, so sessions recorded on different days share
one time axis; electrodes (or columns) are channels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from canonstore.errors import SourceError
from canonstore.preprocess.registry import first_line, register

SUFFIXES = (".nwb",)


def recognises(path: Path, head: bytes) -> bool:
    if path.suffix.lower() in SUFFIXES:
        return True
    if head[:8] != b"\x89HDF\r\n\x1a\n":
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:  # NetCDF4 is HDF5 too; NWB says so in a root attribute
            return "nwb_version" in f.attrs
    except OSError:  # damaged: left to the NetCDF module, whose error names the file
        return False


def open_parts(path: Path, recipe) -> list[xr.Dataset]:
    """The recipe's TimeSeries of one NWB file as a lazy Dataset with `time` and `channel` coordinates."""
    from pynwb import NWBHDF5IO

    where = str(path)
    try:
        io = NWBHDF5IO(str(path), "r")
        nwb = io.read()
    except Exception as exc:  # pynwb/hdmf/h5py raise many types for damaged files
        first = first_line(exc)
        raise SourceError(f"{where}: cannot open as NWB (damaged, truncated or another format): {first}") from exc
    try:
        series = _series(nwb, recipe.series, where)
        data = series.data
        if data.ndim not in (1, 2):
            raise SourceError(
                f"{where}: series '{_path_of(series)}' has {data.ndim}-D data {data.shape}; "
                "canonstore stores (time,) or (time, channel) series"
            )
        seconds = _seconds(series, data.shape[0], where)
        labels = _channel_labels(series, data)
        # channel_conversion is an ElectricalSeries field; a plain TimeSeries has only `conversion`
        per_channel = getattr(series, "channel_conversion", None)
        scale = float(series.conversion) * (
            np.ones(1) if per_channel is None else np.asarray(per_channel[:], dtype=np.float64)
        )
        if data.ndim == 2 and scale.size not in (1, data.shape[1]):
            raise SourceError(
                f"{where}: '{_path_of(series)}' has {scale.size} channel_conversion values for {data.shape[1]} channels"
            )
    except Exception:
        io.close()
        raise
    start = np.datetime64(nwb.session_start_time.astimezone(_utc()).replace(tzinfo=None), "ns")
    times = start + np.round(seconds * 1e9).astype("timedelta64[ns]")
    dims = ("time",) if data.ndim == 1 else ("time", "channel")
    values = indexing.LazilyIndexedArray(_PhysicalValues(data, scale, float(series.offset)))
    coords = {"time": ("time", times, {"standard_name": "time", "axis": "T"})}
    if data.ndim == 2:
        coords["channel"] = ("channel", np.array(labels, dtype=object))
    ds = xr.Dataset({series.name: xr.Variable(dims, values, {"units": series.unit or ""})}, coords=coords)
    ds.attrs["canonstore_session"] = str(nwb.session_id or path.stem)
    ds.set_close(io.close)
    return [ds]


class _PhysicalValues(BackendArray):
    """An HDF5 dataset read in slices and converted to physical units on the way out (float64)."""

    def __init__(self, data, scale: np.ndarray, offset: float):
        self.data, self.scale, self.offset = data, scale, offset
        # float32 data in volts already (conversion 1, offset 0) stays float32: the build then reads it once
        self.identity = np.dtype(data.dtype) == np.float32 and bool(np.all(scale == 1.0)) and offset == 0.0
        self.shape, self.dtype = tuple(data.shape), np.dtype(np.float32 if self.identity else np.float64)

    def __getitem__(self, key):
        # h5py takes slices and at most one increasing index list: OUTER_1VECTOR.
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self._read)

    def _read(self, key: tuple):
        if self.identity:
            return np.asarray(self.data[key])
        raw = np.asarray(self.data[key], dtype=np.float64)
        scale = self.scale if self.scale.size == 1 or len(key) < 2 else self.scale[key[1]]
        return raw * scale + self.offset


def _series(nwb, name: str | None, where: str):
    """The TimeSeries at `name` ("acquisition/ElectricalSeries", "processing/ecephys/LFP/ElectricalSeries")."""
    from pynwb.base import TimeSeries

    if name is None:
        found = [s for s in nwb.acquisition.values() if isinstance(s, TimeSeries)]
        if len(found) == 1:
            return found[0]
        raise SourceError(f"{where}: name the series to store with `series:` in the recipe; found {_listing(nwb)}")
    obj = nwb
    for part in name.split("/"):
        try:
            obj = getattr(obj, part) if obj is nwb else obj[part]
        except (AttributeError, KeyError, TypeError):
            raise SourceError(f"{where}: no series '{name}' (recipe 'series'); found {_listing(nwb)}") from None
    if not isinstance(obj, TimeSeries):
        raise SourceError(
            f"{where}: '{name}' (recipe 'series') is a {type(obj).__name__}, not a TimeSeries; found {_listing(nwb)}"
        )
    return obj


def _listing(nwb) -> str:
    from pynwb.base import TimeSeries

    paths = [_path_of(o) for o in nwb.objects.values() if isinstance(o, TimeSeries)]
    return ", ".join(sorted(paths)) or "no TimeSeries"


def _path_of(obj) -> str:
    """Where a series sits in the file, as a recipe names it: acquisition/X or processing/module/.../X."""
    from pynwb import ProcessingModule

    parts = []
    while obj is not None and obj.parent is not None:
        parts.append(obj.name)
        if isinstance(obj, ProcessingModule):
            parts.append("processing")
            break
        obj = obj.parent
    else:
        parts.append("acquisition")
    return "/".join(reversed(parts))


def _seconds(series, steps: int, where: str) -> np.ndarray:
    """Seconds since session start of every row: explicit `timestamps`, else `starting_time + i / rate`."""
    if series.timestamps is not None:
        stamps = np.asarray(series.timestamps[:], dtype=np.float64)  # the time axis is loaded anyway
        if stamps.shape != (steps,):
            raise SourceError(
                f"{where}: '{_path_of(series)}' has {stamps.size} timestamps for {steps} rows of "
                "data (ragged); they must match one to one"
            )
        if not np.isfinite(stamps).all():
            raise SourceError(
                f"{where}: '{_path_of(series)}' has a NaN or infinite timestamp at row "
                f"{int(np.flatnonzero(~np.isfinite(stamps))[0])}"
            )
        return stamps
    if not series.rate or series.rate <= 0:
        raise SourceError(f"{where}: '{_path_of(series)}' has neither timestamps nor a positive rate")
    return float(series.starting_time or 0.0) + np.arange(steps, dtype=np.float64) / float(series.rate)


def _channel_labels(series, data) -> list[str]:
    """Electrodes by their `label` column (else `electrode<id>`); other series' columns `<name>_<i>`."""
    if data.ndim == 1:
        return []
    region = getattr(series, "electrodes", None)
    if region is None:
        return [f"{series.name}_{i}" for i in range(data.shape[1])]
    rows = np.asarray(region.data[:])
    table = region.table
    if "label" in table.colnames:
        return [str(table["label"][int(r)]) for r in rows]
    ids = np.asarray(table.id[:])
    return [f"electrode{int(ids[r])}" for r in rows]


def _utc():
    import datetime as dt

    return dt.timezone.utc


register("nwb", sys.modules[__name__])
