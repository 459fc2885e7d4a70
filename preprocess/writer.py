"""Write a normalised store into `<name>.zarr.partial`, then publish it by rename.

Nothing is ever written at the final path directly: a failed or interrupted build leaves
the previous store (or nothing) there, and at most a `.partial` directory beside it.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from canonstore.errors import SourceError, StoreError
from canonstore.formats.manifest import MANIFEST
from canonstore.formats.zarr_ import ShardWriter, create_data_array


def staging_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_output(out: Path) -> None:
    """Refuse to replace anything at `out` that is not a canonstore store."""
    if not out.exists():
        return
    if not out.is_dir() or not (out / "zarr.json").is_file():
        raise StoreError(f"output {out} exists and is not a canonstore store; move it away or choose --out")
    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    if "canonstore" not in attrs:
        raise StoreError(f"output {out} is a Zarr store not made by canonstore; refusing to replace it")


def start(out: Path) -> Path:
    staging = staging_path(out)
    if staging.exists():
        shutil.rmtree(staging)
    out.parent.mkdir(parents=True, exist_ok=True)
    return staging


def write_metadata(staging: Path, meta: xr.Dataset) -> None:
    """Everything but `data` (coordinates, stats, splits, static, mask) through xarray."""
    meta.to_zarr(staging, mode="w-", zarr_format=3, consolidated=False)


class DataWriter:
    """Normalise float64 blocks and write them into `data`, memory bounded by one block."""

    def __init__(self, staging: Path, shape: tuple[int, ...], dims: tuple[str, ...], dtype: str,
                 compression: str, shard_steps: int, mean: np.ndarray, scale: np.ndarray):
        group = zarr.open_group(staging, mode="r+")
        self.array = create_data_array(group, shape, dtype, dims, compression, shard_steps,
                                       attributes={"long_name": "normalised data: (x - stats_mean) / scale",
                                                   "coordinates": "channel_variable channel_level channel_units"})
        self.dtype = np.dtype(dtype)
        bshape = (1, -1) + (1,) * (len(shape) - 2)
        self.mean, self.scale = mean.reshape(bshape), scale.reshape(bshape)
        self.shard = ShardWriter(staging, shape, self.dtype) if compression == "none" else None

    def write(self, start: int, block: np.ndarray, where) -> None:
        """Write steps [start, start + len(block)); `where(step, channel)` names a value in errors."""
        normalised = (block - self.mean) / self.scale
        np.nan_to_num(normalised, copy=False, nan=0.0)  # NaNs only remain where nan_policy is fill
        if self.dtype == np.float16:
            self._check_float16(normalised, start, where)
        out = normalised.astype(self.dtype)
        if self.shard is not None:
            self.shard.write(start, out)
        else:
            self.array[start:start + len(out)] = out

    def _check_float16(self, values: np.ndarray, start: int, where) -> None:
        limit = float(np.finfo(np.float16).max)
        over = np.abs(values) > limit
        if over.any():
            step, chan = (int(i) for i in np.argwhere(over)[0][:2])
            raise SourceError(f"{where(start + step, chan)}: normalised value {values[step, chan][over[step, chan]][0]:.4g} "
                              f"overflows float16 (max {limit:g}); use storage.dtype float32")

    def finish(self) -> None:
        if self.shard is not None:
            self.shard.finish()

    def abort(self) -> None:
        if self.shard is not None:
            self.shard.abort()


def set_root_attrs(staging: Path, attrs: dict) -> None:
    zarr.open_group(staging, mode="r+").attrs.update({"canonstore": attrs})


def consolidate(staging: Path) -> None:
    """Consolidated metadata lets readers open the store without listing it (one read, no
    warning about our manifest.json); zarr-python supports it for v3 though the spec does not yet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        zarr.consolidate_metadata(staging)


def publish(staging: Path, out: Path) -> None:
    """Swap the finished staging directory in at `out`; the old store is removed afterwards."""
    if not (staging / MANIFEST).is_file():
        raise StoreError(f"{staging}: no manifest; refusing to publish an incomplete store")
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(staging, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
