"""Files and folders canonstore writes and publishes: never half of one, never one it did not make.

A file is written to `<name>.tmp-<pid>` beside it, synced to disk and renamed over it, then its folder is
synced (`write_file_atomic`, `write_json_atomic`, `write_file_atomic_with`): a kill or a power loss leaves
the old file or the new one.

A new folder is staged beside its place (`<out>.partial`) and carries `MARKER` from the moment it is
created; it is put in place by one swap, so readers see the old folder or the new one. The old folder
gets the marker just before the swap and is then removed, the marker last. Whatever a kill leaves
beside `out` (`<out>.partial`, `<out>.old-<pid>`) therefore carries the marker, and canonstore deletes
such a folder only when it does (`remove_ours`); anything else there is refused by name. Replacing
`out` itself is the caller's decision: it first checks that `out` is its own kind of finished folder.
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


def mark(folder: Path, kind: str) -> None:
    """Write the marker that says canonstore made `folder`, a staging of `kind` ("store", "npy export")."""
    record = {
        "made_by": "canonstore",
        "kind": kind,
        "pid": os.getpid(),
        "host": os.uname().nodename,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, json.dumps(record).encode())  # one small write: a kill leaves all of it or an empty file
    finally:
        os.close(fd)


def make_staging(path: Path, kind: str) -> Path:
    """An empty, marked staging folder at `path`; a previous one there is removed if it is ours, else refused."""
    remove_ours(path, kind)
    path.mkdir(parents=True)
    mark(path, kind)
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


def remove_ours(folder: Path, kind: str) -> bool:
    """Remove `folder` if it carries canonstore's marker of `kind`, or is empty (nothing in it can be lost);
    False if there is none. Anything else is refused in one line naming it."""
    if not os.path.lexists(folder):
        return False
    if has_marker(folder, kind):
        remove_tree(folder)
        return True
    try:
        folder.rmdir()
        return True
    except OSError:
        pass
    raise StoreError(
        f"{folder} exists and is not canonstore's (it has no {MARKER} marker of a {kind} staging); "
        "canonstore deletes only what it made: move it away, canonstore stages its output there"
    )


def is_empty_folder(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir())


def remove_tree(folder: Path) -> None:
    """Delete `folder`, never following a link, its marker last (a kill leaves it recognisably ours)."""
    if folder.is_symlink():  # deleting the link loses nothing; never what it points to
        folder.unlink()
        return
    if not os.path.isfile(folder / MARKER) or os.path.islink(folder / MARKER):  # every caller marked it first
        raise StoreError(f"{folder}: not removed: it has no {MARKER} marker (canonstore deletes only what it made)")
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name == MARKER:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / MARKER)
    os.rmdir(folder)


def leftovers(out: Path) -> list[Path]:
    """`<out>.old-<pid>` folders: a previous `out` that a kill left while it was being removed
    (where the filesystem cannot swap, the old folder is renamed there first)."""
    return sorted(Path(p) for p in glob.glob(glob.escape(str(out)) + ".old-*"))


def replace_folder(staging: Path, out: Path, kind: str = "folder") -> None:
    """Put the complete folder `staging` at `out` in one step and remove what was there.

    The caller has checked that an existing `out` is its own to replace. It is marked as a staging of
    `kind`, then swapped with the staging (renameat2 RENAME_EXCHANGE, so `out` is never missing), or
    where that is unsupported renamed to `<out>.old-<pid>` first; then removed, the marker last.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.exists():
        mark(out, kind)  # from here on, wherever a kill leaves the old folder, it is recognisably ours
        if exchange(staging, out):
            old = staging
        else:  # no atomic exchange here: a short moment without a folder at `out`
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(staging, out)
    else:
        os.rename(staging, out)
    (out / MARKER).unlink(missing_ok=True)  # published: no longer a staging
    fsync(out.parent)
    if old is not None:
        remove_tree(old)


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


def fsync(path: Path) -> None:
    """Flush `path` to the disk: a file's data (written by this process or another), a folder's entries."""
    fd = os.open(path, os.O_RDONLY)  # Linux syncs through a read-only descriptor too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing `nbytes` at `offset` of `fd` to the disk, without waiting (Linux sync_file_range): a file
    synced at its end then waits only for its last pages, not for all of them. Nothing where unsupported."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
            _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # a failure here shows at the fsync


_sync_file_range = None


def sync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to the disk: one syncfs(2) of its filesystem on Linux (the
    kernel writes everything back at once, instead of one fsync's round trip per file), else an fsync of each."""
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        syncfs = None
    if syncfs is not None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for parent, _, names in os.walk(folder):
        for name in names:
            fsync(Path(parent, name))
        fsync(Path(parent))


def write_file_atomic_with(path: Path, write: Callable[[Path], object]) -> None:
    """Put a new `path` in place in one step: `write(tmp)` creates the file `tmp` (`<name>.tmp-<pid>` beside
    `path`; e.g. `torch.save(state, tmp)`), which is synced, renamed over `path`, and the folder synced.
    A failed `write` leaves `path` as it was and removes `tmp`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def write_file_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` atomically and durably (see `write_file_atomic_with`)."""
    payload = data.encode() if isinstance(data, str) else data
    write_file_atomic_with(path, lambda tmp: tmp.write_bytes(payload))


def write_json_atomic(path: Path, value, **dumps) -> None:
    """`json.dumps(value, **dumps)` and a newline, written as `write_file_atomic` does."""
    write_file_atomic(path, json.dumps(value, **dumps) + "\n")
