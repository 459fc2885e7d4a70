"""One build per output at a time: `<out>.lock`, held with flock (or an exclusive file) for the whole build."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import re
from pathlib import Path

from canonstore.errors import StoreError

logger = logging.getLogger(__name__)

HOLDER = re.compile(r"pid \d+ on .*, started \S+$")  # what a build writes into its lock file


@contextlib.contextmanager
def build_lock(out: Path, what: str | None = None):
    """Hold `<out>.lock` for a build (`what`, default "build of <out>"); a second one is refused, naming the first.

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
            raise StoreError(
                f"another {what or f'build of {out}'} is running ({_holder(fd)}); wait for it to finish"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            logger.warning(
                f"{path.parent} does not support flock ({exc.strerror}); using the lock file "
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
