"""The local folder a `build --out s3://` builds in before it publishes: `$TMPDIR/canonstore-upload-XXXXXXXX`.

It carries canonstore's marker (`atomic.MARKER`, kind "upload build") and its build holds a flock on that marker
until it ends, when the folder is removed. A build killed with -9 (or a lost node) leaves the folder behind; the
next `build --out s3://` on this machine removes every such folder under the same temp folder whose flock is free
(its build is gone), naming it, and nothing else: a folder without the marker, or whose build runs, is kept.

    with upload_folder() as folder:       # removes stale ones first; -> Path('/tmp/canonstore-upload-k2j9x0aa')
        build(recipe, folder / "era5.zarr")
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
from pathlib import Path

from canonstore.atomic import MARKER, has_marker, mark, remove_tree

logger = logging.getLogger(__name__)

PREFIX = "canonstore-upload-"
KIND = "upload build"


@contextlib.contextmanager
def upload_folder(root: Path | None = None):
    """A new marked folder under `root` (default: the temp folder, `TMPDIR`), held for the block, then removed;
    stale ones under `root` are removed first (`remove_stale`)."""
    root = Path(root or tempfile.gettempdir())
    remove_stale(root)
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    fd = os.open(folder / MARKER, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        _try_lock(fd)  # before the marker says what the folder is: no one sees it marked and unlocked
        mark(folder, KIND)
        yield folder
    finally:
        try:
            remove_tree(folder)
        finally:
            os.close(fd)


def remove_stale(root: Path) -> list[Path]:
    """Remove the folders under `root` that a killed `build --out s3://` left (marked, flock free); the removed."""
    removed = []
    for folder in sorted(Path(root).glob(PREFIX + "*")):
        if not has_marker(folder, KIND):
            continue  # not canonstore's, or being made right now
        try:
            fd = os.open(folder / MARKER, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # removed meanwhile
        try:
            if not _try_lock(fd):
                continue  # its build is running
            logger.info(f"removing {folder}: the staging folder of a killed `build --out s3://`")
            remove_tree(folder)
            removed.append(folder)
        except OSError as exc:  # another build removing it at the same time
            logger.debug(f"{folder}: not removed: {exc}")
        finally:
            os.close(fd)
    return removed


def _try_lock(fd: int) -> bool:
    """flock `fd` without waiting: False when another process holds it, or the filesystem cannot tell (no
    flock there: such folders are never taken for stale)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    return True
