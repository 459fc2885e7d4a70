"""GRIB 1 and 2 sources (ERA5 from the CDS, say) through cfgrib, with ecCodes from its binary wheel.

Fields are indexed by `valid_time` (cfgrib's `time_dims`), so analyses (step 0) and forecast
steps (ERA5's accumulations: 06/18 UTC runs, steps 1..12) land on one time axis. A file that
holds several hypercubes (surface and pressure levels, say) opens as several Datasets. cfgrib's
index files go to a cache folder, never beside the inputs, which may be read-only; they are pickles,
so the folder is the user's own (0o700) and one that others could write to is refused. They are worth
keeping: without them every open scans each file's messages (a GRIB build took 3-4x as long).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

import xarray as xr

from canonstore.errors import SourceError

SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb1", ".grb2")
# Scalar coordinates that say which level type or ensemble member a hypercube is; they differ
# between the hypercubes of one file and carry nothing the store keeps.
# A scalar pressure level stays: sources names the channel after it (t at 500 hPa -> t500).
_SCALAR_COORDS = ("number", "step", "time", "surface", "heightAboveGround", "meanSea", "depthBelowLandLayer",
                  "entireAtmosphere", "hybrid")


def recognises(path: Path, head: bytes) -> bool:
    return head[:4] == b"GRIB" or path.suffix.lower() in SUFFIXES


def index_folder() -> Path:
    """Where cfgrib's index files go: $CANONSTORE_CACHE/grib-index, else ~/.cache/canonstore/grib-index."""
    base = os.environ.get("CANONSTORE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "canonstore"
    return Path(base) / "grib-index"


def private_index_folder() -> Path:
    """`index_folder()`, created owner-only (0o700). cfgrib loads its index files with pickle, which runs
    code, so a folder another user could write index files into (or swap for theirs) is refused."""
    folder = index_folder()
    folder.parent.parent.mkdir(parents=True, exist_ok=True)
    for made in (folder.parent, folder):  # ours, whatever the umask (002 would make them group-writable)
        with contextlib.suppress(FileExistsError):
            made.mkdir(mode=0o700)
    mine, parent = os.stat(folder), os.stat(folder.parent)
    problem, fix = None, folder
    if mine.st_uid != os.getuid():
        problem = f"it belongs to another user (uid {mine.st_uid})"
    elif mine.st_mode & 0o022:
        problem = f"it is writable by group or others (mode {stat.S_IMODE(mine.st_mode):o})"
    elif parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
        problem, fix = (f"its folder {folder.parent} is writable by group or others without the sticky bit (mode "
                        f"{stat.S_IMODE(parent.st_mode):o}), so others could replace it"), folder.parent
    if problem:
        raise SourceError(f"cfgrib's GRIB index cache {folder}: {problem}; its index files are pickles, which run code "
                          f"when loaded: set CANONSTORE_CACHE to a folder only you can write to"
                          + ("" if mine.st_uid != os.getuid() else f" (or chmod go-w {fix})"))
    return folder


def open_parts(path: Path, recipe) -> list[xr.Dataset]:
    """Every hypercube of the file as a lazy Dataset on a `valid_time` axis (datetime64[s])."""
    import cfgrib

    _check_complete(path)
    folder = private_index_folder()
    # One index per input path and cfgrib key set; cfgrib checks the index against the file's mtime.
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    indexpath = str(folder / f"{key}.{{short_hash}}.idx")
    try:
        parts = cfgrib.open_datasets(str(path), backend_kwargs={"indexpath": indexpath},
                                     time_dims=("valid_time",), cache=False)
    except Exception as exc:  # ecCodes and cfgrib raise many types for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"{path}: cannot open as GRIB (damaged, truncated or another format): "
                          f"{first}") from exc
    if not parts:
        raise SourceError(f"{path}: holds no GRIB field cfgrib can read")
    return [_on_one_axis(ds) for ds in parts]


def _check_complete(path: Path) -> None:
    """Refuse a truncated file: ecCodes reads up to the last whole message and drops the rest silently.

    Every GRIB message ends with `7777` (GRIB1 may pad with zeros after it), so a file cut inside a
    message does not; a cut exactly between two messages cannot be told from a shorter file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 512))
        tail = f.read()
    end = tail.rfind(b"7777")
    if end < 0 or tail[end + 4:].strip(b"\0"):
        raise SourceError(f"{path}: truncated or damaged GRIB file: it does not end with a whole message "
                          "(ecCodes would silently read only the messages before the cut)")


def _on_one_axis(ds: xr.Dataset) -> xr.Dataset:
    """A one-field file has a scalar `valid_time`: make it the time dimension all the same; seconds,
    like the NetCDF sources, so both kinds give the same time values."""
    ds = ds.drop_vars([c for c in _SCALAR_COORDS if c in ds.coords and ds[c].ndim == 0])
    if "valid_time" in ds.coords and ds["valid_time"].ndim == 0:
        ds = ds.expand_dims("valid_time")
    if "valid_time" in ds.coords:
        attrs = ds["valid_time"].attrs
        ds = ds.assign_coords(valid_time=("valid_time", ds["valid_time"].values.astype("datetime64[s]"), attrs))
    for name in ds.data_vars:  # cfgrib's `GRIB_*` attributes stay; CF `units` is what the store keeps
        ds[name].attrs.setdefault("units", ds[name].attrs.get("GRIB_units", ""))
    return ds
