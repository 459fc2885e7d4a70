"""`<store>.log`: the build's own lines, dask's messages and a failure's traceback, one section per build.

The terminal gets the build's lines and, on failure, one `error: ...` line; the log keeps the details
(the traceback a task raised on a worker, what dask said about lost workers). Appended, never
truncated: a file of that name that canonstore did not write loses nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import traceback
from pathlib import Path


def log_path(out: Path) -> Path:
    return out.with_name(out.name + ".log")


@contextlib.contextmanager
def build_log(out: Path, log=print, what: str = "build"):
    """Yield a `log` that also appends to `<out>.log`, which dask's loggers write to meanwhile.

    Writing the log never fails a build (a full disk is reported by the build itself).
    """
    try:
        file = open(log_path(out), "a", encoding="utf-8")
    except OSError:
        yield log
        return

    def write(text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            file.write(text if text.endswith("\n") else text + "\n")
            file.flush()

    def both(line: str) -> None:
        log(line)
        write(f"{dt.datetime.now().isoformat(timespec='seconds')} {line}")

    handler = _ToLog(write)
    write(f"== canonstore {what} of {out} (pid {os.getpid()} on {os.uname().nodename}), "
          f"{dt.datetime.now().isoformat(timespec='seconds')}")
    for name in DASK_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield both
    except BaseException as exc:
        write(f"failed: {type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}")
        raise
    finally:
        for name in DASK_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        with contextlib.suppress(OSError):
            file.close()


# Dask's loggers that do not pass their records up to "distributed" (its logging config gives them handlers
# of their own): the client's (results it could not gather, say) and tornado's.
DASK_LOGGERS = ("distributed", "distributed.client", "tornado", "tornado.application")


class _ToLog(logging.Handler):
    """Records into the build log. Not a StreamHandler: dask's `silence_logs` quiets every StreamHandler."""

    def __init__(self, write):
        super().__init__(logging.WARNING)  # dask's INFO lines (every start and close) would drown the rest
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        self._write = write

    def emit(self, record: logging.LogRecord) -> None:
        self._write(self.format(record))
