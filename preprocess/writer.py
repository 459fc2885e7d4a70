"""Write a normalised store into `<name>.zarr.partial`, then publish it by rename.

Nothing is ever written at the final path directly: a failed or interrupted build leaves
the previous store (or nothing) there, and at most a `.partial` directory beside it, which
records how far it got (`progress.json`) so that `build --resume` can go on from there.
One build per output at a time: `<name>.zarr.lock` is held (flock) for the whole build.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from canonstore.errors import SourceError, StoreError
from canonstore.formats.manifest import MANIFEST
from canonstore.formats.store import normalise
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


@contextlib.contextmanager
def build_lock(out: Path, log=print):
    """Hold `<out>.lock` for a build; a second build of the same output is refused, naming the first.

    flock is released by the kernel when the holder dies (even by kill -9), so a stale lock file
    never blocks a later build. Where the filesystem has no flock (some Lustre and NFS mounts) the
    build says so and falls back to creating `<out>.lock.excl` exclusively, removed at the end.
    """
    path = out.with_name(out.name + ".lock")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot create {exc.filename or path} for the build of {out}: {exc.strerror or exc}") from exc
    holder = f"pid {os.getpid()} on {os.uname().nodename}, started {dt.datetime.now().isoformat(timespec='seconds')}"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another build of {out} is running ({_holder(fd)}); wait for it to finish") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log(f"warning: {path.parent} does not support flock ({exc.strerror}); using the lock file "
                f"{path}.excl instead: if a build is killed, delete that file before the next build")
            with _exclusive_file(Path(f"{path}.excl"), out, holder):
                yield
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"


@contextlib.contextmanager
def _exclusive_file(path: Path, out: Path, holder: str):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise StoreError(f"another build of {out} is running ({path.read_text(errors='replace').strip()}); "
                         f"if none is, a killed build left {path}: delete it") from None
    try:
        os.write(fd, holder.encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


PROGRESS = "progress.json"


def save_progress(staging: Path, state: dict) -> None:
    """Record resumable state (JSON) atomically and durably: a kill or a power loss leaves the old or
    the new file, never half (the caller has flushed the data the state describes)."""
    tmp = staging / (PROGRESS + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, staging / PROGRESS)
    _fsync_dir(staging)


def load_progress(staging: Path) -> dict | None:
    try:
        return json.loads((staging / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


def write_metadata(staging: Path, meta: xr.Dataset) -> None:
    """Everything but `data` (coordinates, stats, splits, static, mask) through xarray."""
    meta.to_zarr(staging, mode="w-", zarr_format=3, consolidated=False)


class DataWriter:
    """Normalise float64 blocks and write them into `data`'s shards, memory bounded by one block."""

    def __init__(self, staging: Path, shape: tuple[int, ...], dims: tuple[str, ...], dtype: str,
                 compression: str, shard_steps: int, mean: np.ndarray, std: np.ndarray, resume: bool = False):
        group = zarr.open_group(staging, mode="r+")
        if resume:
            self.array = group["data"]
        else:
            self.array = create_data_array(group, shape, dtype, dims, compression, shard_steps,
                                           attributes={"long_name": "normalised data: (x - stats_mean) / scale",
                                                       "coordinates": "channel_variable channel_level channel_units"})
        self.dtype = np.dtype(dtype)
        self.mean, self.std = mean, std
        self.shards = ShardWriter(staging, shape, self.dtype, shard_steps, resume) if compression == "none" else None

    def write(self, start: int, block: np.ndarray, where, channel: int = 0) -> None:
        """Write steps [start, start + len(block)) of channels from `channel` on; `where(step, channel)`
        names a value in errors."""
        channels = slice(channel, channel + block.shape[1])
        normalised = normalise(block, self.mean[channels], self.std[channels], inplace=block.dtype == np.float64)
        if self.dtype == np.float16:
            self._check_float16(normalised, start, channel, where)
        out = normalised.astype(self.dtype)
        if self.shards is not None:
            self.shards.write(start, out, channel)
        else:
            self.array[start:start + len(out), channels] = out

    def _check_float16(self, values: np.ndarray, start: int, channel: int, where) -> None:
        limit = float(np.finfo(np.float16).max)
        over = np.abs(values) > limit
        if over.any():
            step, chan = (int(i) for i in np.argwhere(over)[0][:2])
            raise SourceError(f"{where(start + step, channel + chan)}: normalised value "
                              f"{values[step, chan][over[step, chan]][0]:.4g} overflows float16 (max {limit:g}); "
                              "use storage.dtype float32")

    def sync(self) -> None:
        """Data written so far is on disk (before `progress.json` may say so)."""
        if self.shards is not None:
            self.shards.sync()

    def finish_shard(self, k: int) -> None:
        if self.shards is not None:
            self.shards.finish_shard(k)

    def abort(self) -> None:
        if self.shards is not None:
            self.shards.close()


def set_root_attrs(staging: Path, attrs: dict) -> None:
    zarr.open_group(staging, mode="r+").attrs.update({"canonstore": attrs})


def set_data_labels(staging: Path) -> None:
    """Copy the labels into `data`'s attributes as plain JSON (FORMAT.md, "Labels").

    The label arrays (`channel`, `channel_units`, ...) use zarr-python's variable-length string
    type, which other Zarr v3 readers (tensorstore, zarrs) refuse; JSON attributes every reader has.
    """
    group = zarr.open_group(staging, mode="r+")
    info = group.attrs["canonstore"]

    def strings(name: str) -> list[str]:
        return [str(v) for v in group[name][...]] if name in group else []

    time = group["time"].attrs.asdict()
    group["data"].attrs["labels"] = {
        "dims": list(group["data"].metadata.dimension_names),
        "channel": strings("channel"), "channel_units": strings("channel_units"),
        "channel_variable": strings("channel_variable"),
        "channel_level": [None if np.isnan(v) else float(v) for v in group["channel_level"][...]],
        "static_channel": strings("static_channel"), "static_units": strings("static_units"),
        "latitude": info.get("latitude"), "longitude": info.get("longitude"),
        "time": {"array": "time", "units": time.get("units"), "calendar": time.get("calendar"),
                 "dtype": str(group["time"].dtype)},
    }


def consolidate(staging: Path) -> None:
    """Consolidated metadata lets readers open the store without listing it (one read, no
    warning about our manifest.json); zarr-python supports it for v3 though the spec does not yet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        zarr.consolidate_metadata(staging)


def publish(staging: Path, out: Path) -> None:
    """Put the finished staging directory at `out` in one step; the old store is removed afterwards.

    An existing store is swapped with renameat2(RENAME_EXCHANGE), so `out` is never missing; readers
    that have old files open or mapped keep reading them (Linux frees them once closed).
    """
    if not (staging / MANIFEST).is_file():
        raise StoreError(f"{staging}: no manifest; refusing to publish an incomplete store")
    (staging / PROGRESS).unlink(missing_ok=True)
    if out.exists() and _exchange(staging, out):
        _fsync_dir(out.parent)
        shutil.rmtree(staging)  # now the old store
        return
    old = None
    if out.exists():  # no atomic exchange here: a short moment without a store at `out`
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(staging, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
