"""GRIB 1 and 2 sources (ERA5 from the CDS, say) through cfgrib, with ecCodes from its binary wheel.

Fields are indexed by `valid_time` (cfgrib's `time_dims`), so analyses (step 0) and forecast
steps (ERA5's accumulations: 06/18 UTC runs, steps 1..12) land on one time axis. A file that
holds several hypercubes (surface and pressure levels, say) opens as several Datasets. cfgrib's
index files go to a cache folder, never beside the inputs, which may be read-only; they are pickles,
so the folder is the user's own (0o700) and one that others could write to is refused. They are worth
keeping: without them every open scans each file's messages (a GRIB build took 3-4x as long).

Two fields of one variable at one valid time (runs whose steps overlap: 06 UTC +13..18 and 18 UTC
+1..6) would be one value to cfgrib, the other dropped without a word. They follow the recipe's
`on_duplicate_time`: an error naming the file and the valid time, or (`keep_first`) one Dataset per
run for that variable, so that sources joins the runs like files and keeps the earlier run's field.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from canonstore.errors import SourceError
from canonstore.preprocess.registry import first_line, register

SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb1", ".grb2")
# Scalar coordinates that say which level type or ensemble member a hypercube is; they differ
# between the hypercubes of one file and carry nothing the store keeps.
# A scalar pressure level stays: sources names the channel after it (t at 500 hPa -> t500).
_SCALAR_COORDS = (
    "number",
    "step",
    "time",
    "surface",
    "heightAboveGround",
    "meanSea",
    "depthBelowLandLayer",
    "entireAtmosphere",
    "hybrid",
)


def recognises(path: Path, head: bytes) -> bool:
    return head[:4] == b"GRIB" or path.suffix.lower() in SUFFIXES


def index_folder() -> Path:
    """Where cfgrib's index files go: $CANONSTORE_CACHE/grib-index, else ~/.cache/canonstore/grib-index."""
    base = (
        os.environ.get("CANONSTORE_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "canonstore"
    )
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
        problem, fix = (
            (
                f"its folder {folder.parent} is writable by group or others without the sticky bit (mode "
                f"{stat.S_IMODE(parent.st_mode):o}), so others could replace it"
            ),
            folder.parent,
        )
    if problem:
        raise SourceError(
            f"cfgrib's GRIB index cache {folder}: {problem}; its index files are pickles, which run code "
            f"when loaded: set CANONSTORE_CACHE to a folder only you can write to"
            + ("" if mine.st_uid != os.getuid() else f" (or chmod go-w {fix})")
        )
    return folder


def open_parts(path: Path, recipe) -> list[xr.Dataset]:
    """Every hypercube of the file as a lazy Dataset on a `valid_time` axis (datetime64[s])."""
    _check_complete(path)
    folder = private_index_folder()
    # One index per input path and cfgrib key set; cfgrib checks the index against the file's mtime.
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    indexpath = str(folder / f"{key}.{{short_hash}}.idx")
    try:
        parts = _open(path, indexpath)
        duplicated = _duplicated_params(path, indexpath, recipe.on_duplicate_time)
        if duplicated:  # keep_first: those variables one Dataset per run, the runs joined by sources
            parts = [
                ds.drop_vars([v for v in ds.data_vars if ds[v].attrs.get("GRIB_paramId") in duplicated]) for ds in parts
            ]
            parts = [ds for ds in parts if ds.data_vars] + [
                run
                for param, runs in duplicated.items()
                for date, hhmm in runs
                for run in _open(path, indexpath, {"paramId": param, "dataDate": date, "dataTime": hhmm})
            ]
    except SourceError:
        raise
    except Exception as exc:  # ecCodes and cfgrib raise many types for damaged files
        first = first_line(exc)
        raise SourceError(f"{path}: cannot open as GRIB (damaged, truncated or another format): {first}") from exc
    if not parts:
        raise SourceError(f"{path}: holds no GRIB field cfgrib can read")
    return [_on_one_axis(ds) for ds in parts]


def _open(path: Path, indexpath: str, filter_by_keys: dict | None = None) -> list[xr.Dataset]:
    import cfgrib

    kwargs = {"indexpath": indexpath, **({"filter_by_keys": filter_by_keys} if filter_by_keys else {})}
    return cfgrib.open_datasets(str(path), backend_kwargs=kwargs, time_dims=("valid_time",), cache=False)


def _duplicated_params(path: Path, indexpath: str, rule: str) -> dict[int, list[tuple[int, int]]]:
    """The paramIds with two fields at one valid time, each with its runs (dataDate, dataTime); an error
    naming the first such valid time unless `rule` is keep_first.

    cfgrib puts every field on the valid_time axis by its header values and lets the last one win, so
    the check reads its index (the same keys and cache file cfgrib's open just used) rather than the data.
    """
    from cfgrib import dataset, messages

    index = dataset.open_fileindex(
        messages.FileStream(str(path)), indexpath, dataset.compute_index_keys(("valid_time",))
    )
    keys = index.index_keys
    run_keys = [keys.index(k) for k in ("dataDate", "dataTime", "endStep")]  # what differs between runs
    same_field = [i for i in range(len(keys)) if i not in run_keys]
    seen: dict[tuple, list] = {}
    for header, ids in index.field_ids_index:
        seen.setdefault(tuple(header[i] for i in same_field), []).extend((header, i) for i in ids)
    clashes = [fields for fields in seen.values() if len(fields) > 1]
    if not clashes:
        return {}
    at = {k: keys.index(k) for k in ("paramId", "valid_time", "dataDate", "dataTime", "endStep")}

    def run(header) -> str:
        date, hhmm = str(header[at["dataDate"]]), int(header[at["dataTime"]])
        start = f"{date[:4]}-{date[4:6]}-{date[6:]}T{hhmm // 100:02d}:{hhmm % 100:02d}"
        return f"the run of {start} step {header[at['endStep']]:g}"

    if rule != "keep_first":
        fields = min(clashes, key=lambda f: f[0][0][at["valid_time"]])
        (header, first), (other, _) = fields[0], fields[1]
        when = np.datetime64(int(header[at["valid_time"]]), "s")
        raise SourceError(
            f"{path}: variable '{index.get_field(first)['shortName']}' has {len(fields)} fields for "
            f"valid time {when} ({run(header)} and {run(other)}); set `on_duplicate_time: keep_first` "
            "in the recipe to keep the earlier run's field"
        )
    # A field repeated within one run needs nothing: cfgrib reads the first of identical headers.
    params = {fields[0][0][at["paramId"]] for fields in clashes if len({run(h) for h, _ in fields}) > 1}
    runs: dict[int, set] = {p: set() for p in params}
    for header, _ in index.field_ids_index:
        if header[at["paramId"]] in params:
            runs[header[at["paramId"]]].add((header[at["dataDate"]], header[at["dataTime"]]))
    return {param: sorted(r) for param, r in runs.items()}


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
    if end < 0 or tail[end + 4 :].strip(b"\0"):
        raise SourceError(
            f"{path}: truncated or damaged GRIB file: it does not end with a whole message "
            "(ecCodes would silently read only the messages before the cut)"
        )


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


register("grib", sys.modules[__name__])
