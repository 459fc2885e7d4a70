"""Export a store as plain NumPy files, for consumers that want no Zarr at all.

`DIR/train.npy`, `val.npy`, `test.npy` hold the split's steps of `data` exactly as stored (the same
bits, C order, `np.load(..., mmap_mode="r")`-able), copied in blocks so memory stays bounded; `meta.json`
says what they are: channels, units, statistics, the time of every exported step, provenance.
The folder appears by one rename when complete, so a failed export never leaves half of one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from canonstore.atomic import replace_folder
from canonstore.errors import StoreError
from canonstore.formats.store import open_store
from canonstore.formats.zarr_ import map_shard, mappable_layout

SPLITS = ("train", "val", "test")
BLOCK_MB = 64


def export_npy(store_path: str | Path, out: str | Path, overwrite: bool = False, block_mb: float = BLOCK_MB,
               log=print) -> Path:
    """Write STORE's train/val/test steps to `out`/<split>.npy plus `out`/meta.json; return `out`."""
    store, out = open_store(store_path), Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists; remove it or export with --overwrite")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        step_bytes = int(np.prod(store.shape[1:])) * store.dtype.itemsize
        block = max(1, int(block_mb * 2**20 // step_bytes))
        read = block_reader(store)
        files = {}
        for split in SPLITS:
            steps = store.split_indices(split)
            files[split] = _write_split(read, steps, staging / f"{split}.npy", store.dtype, store.shape[1:], block)
            log(f"{split}: {steps.size} steps -> {out / f'{split}.npy'}")
        extras = {}
        if store.static:
            names = list(store.static)
            _write_durably(staging / "static.npy", np.stack([store.static[n] for n in names]))
            extras["static"] = {"file": "static.npy", "channels": names}
        if store.mask is not None:
            _write_durably(staging / "mask.npy", store.mask.astype(np.uint8))
            extras["mask"] = {"file": "mask.npy", "meaning": "1 where the raw value was observed, 0 where filled"}
        meta = export_meta(store, files, extras)
        (staging / "meta.json").write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_split(read, steps: np.ndarray, path: Path, dtype: np.dtype, sample_shape: tuple, block: int) -> dict:
    """Write the steps `steps` (read by `read(a, b)` in runs of consecutive steps, `block` at a time) to a
    new .npy. Plain writes, no memory map: the process holds one block, whatever the split's size."""
    shape = (steps.size,) + tuple(sample_shape)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": shape})
        for run in np.split(steps, np.flatnonzero(np.diff(steps) != 1) + 1) if steps.size else []:
            for lo in range(0, run.size, block):
                a, b = int(run[lo]), int(run[min(lo + block, run.size) - 1]) + 1
                f.write(np.ascontiguousarray(read(a, b), dtype=dtype).data)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "shape": list(map(int, shape)), "steps": steps.tolist()}


def block_reader(store):
    """`read(a, b)`: steps [a, b) of `data` as a new array. Uncompressed shards are read with positioned
    reads (a memory map would keep every page it touched in the process's resident set); compressed
    stores through zarr."""
    if store.attrs["layout"]["compression"] != "none":
        data = store._group["data"]
        return lambda a, b: data[a:b]
    shard_steps = mappable_layout(store.path, store._group["data"])
    step_bytes = int(np.prod(store.shape[1:])) * store.dtype.itemsize
    checked = {}

    def read(a: int, b: int) -> np.ndarray:
        parts = []
        for k in range(a // shard_steps, (b - 1) // shard_steps + 1):
            if k not in checked:  # the shard's index says it holds contiguous C-order steps (not its pages)
                checked[k] = map_shard(store.path, store.shape, store.dtype, shard_steps, k).filename
            lo, hi = max(a, k * shard_steps), min(b, (k + 1) * shard_steps)
            parts.append(np.fromfile(checked[k], dtype=store.dtype.newbyteorder("<"), count=(hi - lo) * step_bytes
                                     // store.dtype.itemsize, offset=(lo - k * shard_steps) * step_bytes))
        return np.concatenate(parts).reshape((b - a,) + tuple(store.shape[1:]))
    return read


def _write_durably(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(values))
        f.flush()
        os.fsync(f.fileno())


def export_meta(store, files: dict, extras: dict) -> dict:
    """What the .npy files hold, in JSON: enough to use them without canonstore or the store."""
    ds = store._ds
    coords = {str(name): _plain(ds[name].values) for name in ds.coords
              if name not in ("time", "channel", "static_channel") and ds[name].dims
              and set(ds[name].dims) <= set(store.dims[2:])}
    split_info = {}
    for split, info in files.items():
        steps = np.asarray(info["steps"], dtype=np.int64)
        entry = {**info, "time": [_time_text(t) for t in store.time[steps]]}
        if store.session is not None:
            entry["session"] = [store.sessions[i] for i in store.session[steps]]
        split_info[split] = entry
    return {
        "format": "canonstore npy export 1",
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
        "provenance": {"store": str(Path(store.path).resolve()),
                       "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "store_attrs": store.attrs},
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
