"""`<store>.log`: the build's own lines, dask's messages and a failure's traceback, one section per build.

The terminal gets the build's lines (as `-v`, `-q` choose) and, on failure, one `error: ...` line; the log
keeps every INFO line with its UTC time and level, and the details (the traceback a task raised on a worker,
what dask said about lost workers), whatever the terminal shows. Appended, never truncated, and only to a log
of canonstore's (its first line is a section's `HEADER`): a file of that name that canonstore did not write,
or a symbolic link, is refused, never written to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import stat
import sys
import traceback
from pathlib import Path

from canonstore._logging import Lines, copied_to
from canonstore.errors import StoreError

HEADER = "== canonstore "  # how each build's section begins, the log's first line included


def log_path(out: Path) -> Path:
    return out.with_name(out.name + ".log")


@contextlib.contextmanager
def build_log(out: Path, what: str = "build"):
    """While the block runs, canonstore's lines (INFO and above, with `-v` DEBUG too) and dask's warnings are
    appended to `<out>.log`; a failure's traceback follows them. Writing the log never fails a build (a full
    disk is reported by the build itself)."""
    file = _open_ours(log_path(out), out)
    if file is None:
        yield
        return

    def write(text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            file.write(text if text.endswith("\n") else text + "\n")
            file.flush()

    dask = Lines(write, logging.WARNING)  # dask's INFO lines (every start and close) would drown the rest
    write(
        f"{HEADER}{what} of {out} (pid {os.getpid()} on {os.uname().nodename}), "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
    )
    for name in DASK_LOGGERS:
        logging.getLogger(name).addHandler(dask)
    try:
        with copied_to(write):
            yield
    except BaseException as exc:
        write(f"failed: {type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}")
        raise
    finally:
        for name in DASK_LOGGERS:
            logging.getLogger(name).removeHandler(dask)
        with contextlib.suppress(OSError):
            file.close()


def _open_ours(path: Path, out: Path):
    """`path` opened to append (created if missing), or None where it cannot be (a read-only folder: the build
    goes on without a log). A link, or a file that does not begin as canonstore's log does, is the user's."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError:
        if os.path.islink(path) or (os.path.lexists(path) and not path.is_file()):
            raise StoreError(
                f"{path} exists and is not canonstore's build log of {out} (a link, or not a file); "
                "canonstore writes only what it made: move it away or choose --out"
            ) from None
        return None
    first = os.pread(fd, len(HEADER), 0)
    if not stat.S_ISREG(os.fstat(fd).st_mode) or (first and first != HEADER.encode()):
        os.close(fd)
        raise StoreError(
            f"{path} exists and is not canonstore's build log of {out} (it does not begin with "
            f"{HEADER.strip()!r}); canonstore writes only what it made: move it away or choose --out"
        )
    return os.fdopen(fd, "a", encoding="utf-8")


# Dask's loggers that do not pass their records up to "distributed" (its logging config gives them handlers
# of their own): the client's (results it could not gather, say) and tornado's. `Lines` is no StreamHandler,
# which dask's `silence_logs` would quiet.
DASK_LOGGERS = ("distributed", "distributed.client", "tornado", "tornado.application")


SILENT = logging.CRITICAL + 1  # above every level: dask writes nothing to the terminal


@contextlib.contextmanager
def quiet_dask():
    """Dask's handlers that write to the terminal write nothing meanwhile; others (the build log) still do."""
    terminal = {id(s) for s in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)}
    handlers = [
        h
        for name in DASK_LOGGERS
        for h in logging.getLogger(name).handlers
        if id(getattr(h, "stream", None)) in terminal
    ]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(SILENT)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels):
            h.setLevel(level)
