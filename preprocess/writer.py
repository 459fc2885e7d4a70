"""Write a normalised store into `<name>.zarr.partial`, then publish it by rename.

Nothing is ever written at the final path directly: a failed or interrupted build leaves
the previous store (or nothing) there, and at most a `.partial` directory beside it, which
records how far it got (`progress.json`) so that `build --resume` can go on from there.
One build per output at a time: `<name>.zarr.lock` is held (flock) for the whole build.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from canonstore.atomic import has_marker, leftovers, make_staging, remove_tree, replace_folder, write_file_atomic
from canonstore.errors import StoreError
from canonstore.formats.manifest import MANIFEST, listed_files, store_entries
from canonstore.formats.zarr_ import create_data_array


def staging_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_output(out: Path) -> None:
    """Refuse to replace anything at `out` that is not wholly a canonstore store.

    A store is ours when its manifest lists every file in it, or (manifest missing or damaged) when
    its `zarr.json` says so; a store whose `zarr.json` is damaged can therefore be rebuilt.
    """
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise StoreError(f"output {out} exists and is not a canonstore store; move it away or choose --out")
    listed = listed_files(out)
    if listed is not None:
        files, others = store_entries(out)
        extra = [rel for rel in files if rel not in listed] + [rel for rel, _ in others]
        if extra:
            raise StoreError(
                f"output {out} holds files that are not the store's ({', '.join(extra[:3])}"
                f"{' ...' if len(extra) > 3 else ''}); canonstore replaces only what it made: move "
                "them out of the store, then build again"
            )
        return
    try:
        attrs = json.loads((out / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        raise StoreError(f"output {out} exists and is not a canonstore store; move it away or choose --out") from None
    if "canonstore" not in attrs:
        raise StoreError(f"output {out} is a Zarr store not made by canonstore; refusing to replace it")


def start(out: Path) -> Path:
    """A new, empty, marked staging folder for `out`; a previous one is removed if it is ours, else refused."""
    return make_staging(staging_path(out), "store")


def clear_leftovers(out: Path, log=print) -> None:
    """Remove what a kill during a publish left beside `out` (call it holding the build lock): the old
    store, swapped to `<out>.partial` (no progress file there: nothing to resume) or renamed to
    `<out>.old-<pid>`, wholly or partly removed. Only folders with our marker are touched."""
    staging = staging_path(out)
    found = leftovers(out) + ([staging] if staging.is_dir() and not (staging / PROGRESS).exists() else [])
    for folder in found:
        if has_marker(folder, "store"):
            log(f"removing {folder}: left by an interrupted build")
            remove_tree(folder)


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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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
            log(
                f"warning: {path.parent} does not support flock ({exc.strerror}); using the lock file "
                f"{path}.excl instead: if a build is killed, delete that file before the next build"
            )
            with _exclusive_file(Path(f"{path}.excl"), out, holder):
                yield
            return
        previous = os.pread(fd, 4096, 0).decode(errors="replace")
        if previous and not HOLDER.match(previous):  # a file of the user's that happens to bear the name
            raise StoreError(
                f"{path} exists and is not canonstore's lock file; canonstore overwrites only "
                "what it made: move it away"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)


HOLDER = re.compile(r"pid \d+ on .*, started \S+$")  # what a build writes into its lock file


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"


@contextlib.contextmanager
def _exclusive_file(path: Path, out: Path, holder: str):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise StoreError(
            f"another build of {out} is running ({path.read_text(errors='replace').strip()}); "
            f"if none is, a killed build left {path}: delete it"
        ) from None
    try:
        os.write(fd, holder.encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


PROGRESS = "progress.json"


def save_progress(staging: Path, state: dict) -> None:
    """Record resumable state (JSON), atomically and durably: the caller has flushed the data it describes."""
    write_file_atomic(staging / PROGRESS, json.dumps(state))


def load_progress(staging: Path) -> dict | None:
    try:
        return json.loads((staging / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


def write_metadata(staging: Path, meta: xr.Dataset) -> None:
    """Everything but `data` (coordinates, stats, splits, static, mask) through xarray."""
    with warnings.catch_warnings():  # our progress files beside the arrays are not Zarr nodes, on purpose
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        # "a": the staging already holds progress files (and raw shards); again on a resume
        meta.to_zarr(staging, mode="a", zarr_format=3, consolidated=False)


def create_data(
    staging: Path, shape: tuple[int, ...], dims: tuple[str, ...], dtype: str, compression: str, shard_steps: int
) -> None:
    """Create `data`'s metadata (its shard files are written by `preprocess.tasks`)."""
    create_data_array(
        zarr.open_group(staging, mode="r+"),
        shape,
        dtype,
        dims,
        compression,
        shard_steps,
        attributes={
            "long_name": "normalised data: (x - stats_mean) / scale",
            "coordinates": "channel_variable channel_level channel_units",
        },
    )


@contextlib.contextmanager
def cleanup_on_failure(staging: Path, log=print):
    """On any failure remove the staging store, so nothing half-built is left; keep it for `--resume`
    when the build was interrupted (Ctrl-C) or lost its workers (an error with `keep_staging`)."""
    try:
        yield
    except KeyboardInterrupt:
        log(f"interrupted: {staging} kept; `canonstore build --resume` goes on from its last shard")
        raise
    except OSError as exc:  # disk full, read-only, quota: say where, keep nothing
        shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(f"cannot write the store at {exc.filename or staging}: {exc.strerror or exc}") from exc
    except BaseException as exc:
        if not getattr(exc, "keep_staging", False):
            shutil.rmtree(staging, ignore_errors=True)
        raise


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
        "channel": strings("channel"),
        "channel_units": strings("channel_units"),
        "channel_variable": strings("channel_variable"),
        "channel_level": [None if np.isnan(v) else float(v) for v in group["channel_level"][...]],
        "static_channel": strings("static_channel"),
        "static_units": strings("static_units"),
        "latitude": info.get("latitude"),
        "longitude": info.get("longitude"),
        "longitude_periodic": info.get("longitude_periodic"),
        "time": {
            "array": "time",
            "units": time.get("units"),
            "calendar": time.get("calendar"),
            "dtype": str(group["time"].dtype),
        },
    }


def consolidate(staging: Path) -> None:
    """Consolidated metadata lets readers open the store without listing it (one read, no
    warning about our manifest.json); zarr-python supports it for v3 though the spec does not yet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        # the staging marker beside the arrays is not a Zarr node, on purpose
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        zarr.consolidate_metadata(staging)


def publish(staging: Path, out: Path) -> None:
    """Put the finished staging directory at `out` in one step; the old store is removed afterwards.

    An existing store is swapped with renameat2(RENAME_EXCHANGE), so `out` is never missing (see
    `canonstore.atomic.replace_folder`); a reader that opened the old store keeps what it holds of it and
    raises on its next read of a file (`formats.handle`).
    """
    if not (staging / MANIFEST).is_file():
        raise StoreError(f"{staging}: no manifest; refusing to publish an incomplete store")
    (staging / PROGRESS).unlink(missing_ok=True)
    replace_folder(staging, out, "store")
