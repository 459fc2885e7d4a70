"""canonstore's messages go through `logging`: one logger per module, under `canonstore`.

    logger = logging.getLogger(__name__)           # in each module that says something
    logger.info("wrote %s", out)                   # what the user is told; debug: detail; warning: act on it

The library adds no handler for good (Python's convention for libraries), so a program that configures no
logging sees nothing below WARNING from it: `logging.basicConfig(level=logging.INFO)` shows the lines. The
`canonstore` command shows them with `on_terminal` for the length of a command, and a build or a training run
copies them into its own log file (`<store>.log`, `runs/<run>/train.log`) with `copied_to` while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

ROOT = "canonstore"
FILE_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"  # dask's lines in a build log read the same
PREFIX = {logging.DEBUG: "debug: ", logging.WARNING: "warning: ", logging.ERROR: "error: "}


class _Stdout(logging.StreamHandler):
    """stdout as it is when a line is written: click's test runner swaps it per command."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ sets it; stdout is looked up at each line instead
        pass


class _TerminalFormat(logging.Formatter):
    """An INFO line is the bare message, as the commands always printed it; other levels say theirs."""

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in PREFIX if lv <= record.levelno), default=logging.INFO)
        return ("" if record.levelno == logging.INFO else PREFIX.get(level, "")) + super().format(record)


@contextlib.contextmanager
def on_terminal(level: int = logging.INFO) -> Iterator[None]:
    """canonstore's lines at `level` and above on stdout while the block runs (the CLI's `-v`, `-q`)."""
    logger = logging.getLogger(ROOT)
    handler = _Stdout()
    handler.setLevel(level)
    handler.setFormatter(_TerminalFormat())
    before = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


class Lines(logging.Handler):
    """Each record as one line with its UTC time, logger and level, handed to `write` (an open log file's)."""

    def __init__(self, write: Callable[[str], None], level: int = logging.INFO):
        super().__init__(level)
        formatter = logging.Formatter(FILE_FORMAT, datefmt="%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
        self.setFormatter(formatter)
        self._write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record))
        except Exception:  # noqa: BLE001 - a log file's trouble never stops the work it records
            self.handleError(record)


class _AsBefore(logging.Handler):
    """Hands the records the program would have seen (its level and above) on to the root logger's handlers,
    or Python's last resort when there are none, as propagation did."""

    def __init__(self, level: int, handled_here: bool):
        super().__init__(level)
        self.handled_here = handled_here

    def emit(self, record: logging.LogRecord) -> None:
        root = logging.getLogger()
        for handler in root.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
        last = logging.lastResort
        if not root.handlers and not self.handled_here and last is not None and record.levelno >= last.level:
            last.handle(record)


@contextlib.contextmanager
def copied_to(write: Callable[[str], None]) -> Iterator[None]:
    """canonstore's lines at INFO and above (DEBUG when the program shows those) also go to `write` while the
    block runs, whatever the terminal shows: a log file keeps what `-q` or an unconfigured program hides.

    Where the program shows less than INFO, INFO records are made for the file alone: the `canonstore` logger
    stops propagating meanwhile, its own handlers keep their level, and `_AsBefore` passes on the rest.
    """
    logger = logging.getLogger(ROOT)
    shown = logger.getEffectiveLevel()
    copy = Lines(write, min(shown, logging.INFO))
    before = (logger.level, logger.propagate, [(h, h.level) for h in logger.handlers])
    if shown > copy.level:
        for handler in logger.handlers:
            handler.setLevel(max(handler.level, shown))
        logger.addHandler(_AsBefore(shown, handled_here=bool(logger.handlers)))
        logger.propagate = False
        logger.setLevel(copy.level)
    logger.addHandler(copy)
    try:
        yield
    finally:
        level, propagate, handlers = before
        kept = {h for h, _ in handlers}
        for handler in [h for h in logger.handlers if h not in kept]:
            logger.removeHandler(handler)
        for handler, handler_level in handlers:
            handler.setLevel(handler_level)
        logger.propagate = propagate
        logger.setLevel(level)
