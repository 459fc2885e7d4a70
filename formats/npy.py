"""Export a store as plain NumPy files, for consumers that want no Zarr at all.

`DIR/train.npy`, `val.npy`, `test.npy` hold the split's steps of `data` exactly as stored (the same
bits, C order, `np.load(..., mmap_mode="r")`-able), copied in blocks so memory stays bounded; `meta.json`
says what they are: channels, units, statistics, the time of every exported step, provenance.
The folder appears by one rename when complete, so a failed export never leaves half of one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from canonstore._progress import progress as progress_bar
from canonstore.atomic import (
    MARKER,
    has_marker,
    is_empty_folder,
    leftovers,
    make_staging,
    remove_tree,
    replace_folder,
    write_file_atomic_with,
    write_json_atomic,
)
from canonstore.buffers import page_aligned_empty
from canonstore.errors import StoreError
from canonstore.formats.store import open_store
from canonstore.formats.zarr_ import ShardLayout, mappable_layout, open_shard, shard_file
from canonstore.splits import SPLITS

logger = logging.getLogger(__name__)

BLOCK_MB = 64
KIND = "npy export"  # the kind of the staging marker, of NetCDF exports too (`netcdf_export`)
META = "meta.json"


def export_npy(
    store_path: str | Path,
    out: str | Path,
    overwrite: bool = False,
    block_mb: float = BLOCK_MB,
    progress: bool = False,
) -> Path:
    """Write STORE's train/val/test steps to `out`/<split>.npy plus `out`/meta.json; return `out`.

    `overwrite` replaces a previous export at `out` (and nothing else: see `_not_an_export`). The
    export is staged in `<out>.partial` and appears by one swap; a store rebuilt while it is read
    fails the export (`formats.handle`) rather than mixing two builds.
    """
    store, out = open_store(store_path), Path(out)
    staging = begin_export(store, out, overwrite)
    try:
        step_bytes = int(np.prod(store.shape[1:])) * store.dtype.itemsize
        block = max(1, int(block_mb * 2**20 // step_bytes))
        read, files = block_reader(store), {}
        with progress_bar(sum(store.split_indices(s).size for s in SPLITS), "export", enabled=progress) as bar:

            def counted(a: int, b: int) -> np.ndarray:
                values = read(a, b)
                bar.update(b - a)
                return values

            for split in SPLITS:
                steps = store.split_indices(split)
                files[split] = _write_split(
                    counted, steps, staging / f"{split}.npy", store.dtype, store.shape[1:], block
                )
                logger.info(f"{split}: {steps.size} steps -> {out / f'{split}.npy'}")
        extras = {}
        if store.static:
            names = list(store.static)
            _write_durably(staging / "static.npy", np.stack([store.static[n] for n in names]))
            extras["static"] = {"file": "static.npy", "channels": names}
        if store.mask is not None:
            _write_durably(staging / "mask.npy", store.mask.astype(np.uint8))
            extras["mask"] = {"file": "mask.npy", "meaning": "1 where the raw value was observed, 0 where filled"}
        finish_export(staging, out, export_meta(store, files, extras))
    except BaseException:
        if staging.is_dir():
            remove_tree(staging)
        raise
    return out


def begin_export(store, out: Path, overwrite: bool) -> Path:
    """The staging folder of an export of `store` to `out` (`<out>.partial`, marked), after checking that `out`
    is outside the store and, if it exists, is a previous export of canonstore's that `overwrite` may replace."""
    staging = out.with_name(out.name + ".partial")
    _check_target(store.path, out, staging)
    if os.path.lexists(out):
        if not overwrite:
            raise StoreError(f"{out} exists; remove it or export with --overwrite")
        reason = _not_an_export(out)
        if reason and not is_empty_folder(out):
            raise StoreError(
                f"{out} {reason}; --overwrite replaces only a previous canonstore export: choose "
                "another folder, or move it away yourself"
            )
    for old in leftovers(out):  # a previous export that a kill left while it was being removed
        if has_marker(old, KIND):
            remove_tree(old)
    return make_staging(staging, KIND)


def finish_export(staging: Path, out: Path, meta: dict) -> None:
    """Write `meta.json` into the complete `staging` and put it at `out` by one swap."""
    with _naming(staging / META):
        write_json_atomic(staging / META, meta, indent=1, allow_nan=False)
    replace_folder(staging, out, KIND)


def _check_target(store: Path, out: Path, staging: Path) -> None:
    """The export (and its staging) may not be, contain, or lie inside the store it reads."""
    store = store.resolve()
    for path in (out, staging):
        where = path.resolve()
        if where == store or store.is_relative_to(where) or where.is_relative_to(store):
            relation = "is" if where == store else "holds" if store.is_relative_to(where) else "is inside"
            raise StoreError(f"export folder {path} {relation} the store {store}; export to a folder outside it")


def _not_an_export(folder: Path) -> str | None:
    """Why `folder` is not a canonstore npy export (None when it is one: its meta.json, written by an export,
    lists every file in it)."""
    if folder.is_symlink() or not folder.is_dir():
        return "is not a folder"
    try:
        meta = json.loads((folder / META).read_text())
        ours = str(meta["format"]).startswith(("canonstore npy export", "canonstore netcdf export"))
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        return f"is not a canonstore export (no {META} written by `canonstore export`)"
    listed = (
        {META, MARKER}
        | {info.get("file") for info in meta.get("splits", {}).values()}
        | {meta[k]["file"] for k in ("static", "mask") if isinstance(meta.get(k), dict)}
    )
    with os.scandir(folder) as entries:
        foreign = sorted(e.name for e in entries if e.name not in listed or not e.is_file(follow_symlinks=False))
    if foreign:
        return f"holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which the export did not write"
    return None


@contextlib.contextmanager
def _naming(path: Path):
    """A failed write (disk full, quota) says which file it was writing."""
    try:
        yield
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: {exc.strerror or exc}; nothing was exported (the partial export is removed)"
        ) from exc


def _write_split(read, steps: np.ndarray, path: Path, dtype: np.dtype, sample_shape: tuple, block: int) -> dict:
    """Write the steps `steps` (read by `read(a, b)` in runs of consecutive steps, `block` at a time) to a
    new .npy. Plain writes, no memory map: the process holds one block, whatever the split's size."""
    shape = (steps.size,) + tuple(sample_shape)
    with _naming(path), open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        )
        for run in np.split(steps, np.flatnonzero(np.diff(steps) != 1) + 1) if steps.size else []:
            for lo in range(0, run.size, block):
                a, b = int(run[lo]), int(run[min(lo + block, run.size) - 1]) + 1
                f.write(np.ascontiguousarray(read(a, b), dtype=dtype).data)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "shape": list(map(int, shape)), "steps": steps.tolist()}


def block_reader(store):
    """`read(a, b)`: steps [a, b) of `data` as a new array, from the store that was opened (a rebuild
    since raises, see `formats.handle`). Uncompressed shards are read with positioned reads (a memory map
    would keep every page it touched in the process's resident set); compressed stores through zarr."""
    if store.attrs["layout"]["compression"] != "none":
        data = store._group["data"]
        return lambda a, b: data[a:b]
    handle, shape, dtype = store._handle, store.shape, store.dtype.newbyteorder("<")
    shard_steps = mappable_layout(store.path, store._group["data"])
    layout = ShardLayout(shape[0], shard_steps)
    step_bytes = int(np.prod(shape[1:])) * dtype.itemsize

    def read(a: int, b: int) -> np.ndarray:
        out = page_aligned_empty((b - a,) + tuple(shape[1:]), dtype)  # a pread at full speed
        view = memoryview(out).cast("B")
        for k in range(layout.shard_of(a), layout.shard_of(b - 1) + 1):
            first, stop = layout.range(k)
            lo, hi = max(a, first), min(b, stop)
            part, offset = view[(lo - a) * step_bytes : (hi - a) * step_bytes], (lo - first) * step_bytes
            fd = open_shard(handle, shape, dtype, shard_steps, k)  # checks the index: contiguous C-order steps
            try:
                done = 0
                while done < len(part):
                    got = os.preadv(fd, [part[done:]], offset + done)
                    if got == 0:
                        raise StoreError(
                            f"{shard_file(store.path, len(shape), k)}: shorter than its steps; run "
                            f"`canonstore verify {store.path}`"
                        )
                    done += got
            finally:
                os.close(fd)
        handle.check()  # the steps just read are the opened store's
        return out

    return read


def _write_durably(path: Path, values: np.ndarray) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file, not a name: np.save would add ".npy" to the name
            np.save(f, np.ascontiguousarray(values))

    with _naming(path):
        write_file_atomic_with(path, save)


def export_meta(store, files: dict, extras: dict, kind: str = "npy") -> dict:
    """What the exported files hold, in JSON: enough to use them without canonstore or the store."""
    ds = store._ds
    coords = {
        str(name): _plain(ds[name].values)
        for name in ds.coords
        if name not in ("time", "channel", "static_channel")
        and ds[name].dims
        and set(ds[name].dims) <= set(store.dims[2:])
    }
    split_info = {}
    for split, info in files.items():
        steps = np.asarray(info["steps"], dtype=np.int64)
        entry = {**info, "time": [_time_text(t) for t in store.time[steps]]}
        if store.session is not None:
            entry["session"] = [store.sessions[i] for i in store.session[steps]]
        split_info[split] = entry
    return {
        "format": f"canonstore {kind} export 1",
        "dims": list(store.dims),
        "dtype": str(store.dtype),
        "order": "C",
        "normalisation": "physical = value * (stats.std if stats.std > 0 else 1) + stats.mean, per channel",
        "channels": store.channels,
        "channel_units": [str(u) for u in ds["channel_units"].values],
        "channel_variable": [str(v) for v in ds["channel_variable"].values],
        "channel_level": [_plain(v) for v in ds["channel_level"].values],
        "stats": {name: _plain(values) for name, values in store.stats.items()},
        "coords": coords,
        "splits": split_info,
        **extras,
        "provenance": {
            "store": str(Path(store.path).resolve()),
            "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "store_attrs": store.attrs,
        },
    }


def _time_text(t) -> str:
    if isinstance(t, np.datetime64):
        return str(np.datetime_as_string(t, unit="s" if t == t.astype("datetime64[s]") else "ns"))
    return t.isoformat() if hasattr(t, "isoformat") else str(t)


def _plain(value):
    """NumPy values as JSON values; NaN (a surface channel's level) as null."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
