"""Folders canonstore makes, publishes and removes: never half of one, never one it did not make.

A folder is staged beside its final place (`<out>.partial`), marked at creation with `MARKER`, and
put in place by one swap, so readers see the old folder or the new one. canonstore deletes a folder
only when it is recognisably its own: the staging marker of the right kind, or (for a finished folder:
a store, an export) its own listing of every file in it (`owned`). A folder is removed with its
identifying files last, so a kill during the removal leaves something the next command still
recognises and finishes removing.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import glob
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from canonstore.errors import StoreError

MARKER = ".canonstore-staging"


def make_staging(path: Path, kind: str, owned: Callable[[Path], bool] | None = None) -> Path:
    """An empty folder at `path` that carries the marker of `kind` ("store", "npy export"), for a new
    `<out>`; a previous one there is removed if it is ours (`remove_ours`), else refused."""
    remove_ours(path, kind, owned)
    path.mkdir(parents=True)
    record = {"made_by": "canonstore", "kind": kind, "pid": os.getpid(), "host": os.uname().nodename,
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    fd = os.open(path / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, json.dumps(record).encode())  # one small write: a kill leaves all of it or no file
    finally:
        os.close(fd)
    return path


def has_marker(folder: Path, kind: str) -> bool:
    """True when `folder` is a real folder holding canonstore's staging marker of `kind`."""
    try:
        if os.path.islink(folder) or os.path.islink(folder / MARKER):
            return False
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("made_by") == "canonstore" and record.get("kind") == kind


def remove_ours(folder: Path, kind: str, owned: Callable[[Path], bool] | None = None,
                last: tuple[str, ...] = ()) -> bool:
    """Remove `folder` if canonstore made it (its marker of `kind`, or `owned(folder)`); False if absent.

    An empty folder is removed too (nothing in it can be lost). Anything else is refused in one line
    naming it. `last`: the files that make `owned` true, removed after everything else.
    """
    if not os.path.lexists(folder):
        return False
    if folder.is_dir() and not folder.is_symlink() and (has_marker(folder, kind) or (owned and owned(folder))):
        remove_tree(folder, last)
        return True
    try:
        folder.rmdir()
        return True
    except OSError:
        pass
    raise StoreError(f"{folder} exists and is not canonstore's (no {MARKER} marker of a {kind} staging, and not "
                     f"a {kind} it wrote); canonstore deletes only what it made: move it away, it is where canonstore "
                     "stages its output")


def is_empty_folder(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir())


def remove_tree(folder: Path, last: tuple[str, ...] = ()) -> None:
    """Delete `folder`, never following a link, its marker and `last` files after everything else."""
    keep = (*last, MARKER)
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name in keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    for name in keep:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / name)
    os.rmdir(folder)


def leftovers(out: Path) -> list[Path]:
    """`<out>.old-<pid>` folders: a previous `out` that a kill left while it was being removed
    (where the filesystem cannot swap, the old folder is renamed there first)."""
    return sorted(Path(p) for p in glob.glob(glob.escape(str(out)) + ".old-*"))


def replace_folder(staging: Path, out: Path, last: tuple[str, ...] = ()) -> None:
    """Put the complete folder `staging` at `out` in one step and remove what was there.

    The caller has checked that an existing `out` is canonstore's. It is swapped with the staging
    (renameat2 RENAME_EXCHANGE, so `out` is never missing), or where that is unsupported renamed to
    `<out>.old-<pid>` first; then removed with `last` (the files that identify it) last. The staging
    marker is dropped before the swap: from then on `staging` is recognised by its own listing.
    """
    (staging / MARKER).unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and exchange(staging, out):
        fsync_dir(out.parent)
        remove_tree(staging, last)  # now the old folder
        return
    old = None
    if out.exists():  # no atomic exchange here: a short moment without a folder at `out`
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(staging, out)
    fsync_dir(out.parent)
    if old is not None:
        remove_tree(old, last)


def exchange(a: Path, b: Path) -> bool:
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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

