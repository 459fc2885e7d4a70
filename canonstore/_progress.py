"""Progress of long steps: a tqdm bar on a terminal; elsewhere (a SLURM log, a pipe) one plain line at a time.

    with progress(total=steps, desc="write", unit="step") as bar:
        bar.update(n)

Off a terminal, tqdm's bar would be a stream of carriage returns (one unreadable line in a log file), and the
training bars used to switch themselves off there: a batch job's log got nothing. Instead a line like
`write:  40%|####      | 1920/4384 [00:10<00:13, 187 step/s]` is written every CANONSTORE_PROGRESS_SECONDS
(default 30) and at the end.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

DEFAULT_SECONDS = 30.0


class _Lines:
    """A stream for tqdm off a terminal: each refresh becomes one line (tqdm starts each with a carriage return)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(total: int | None, desc: str, unit: str = "step", enabled: bool = True, stream=None, **kwargs) -> tqdm:
    """A tqdm bar over `total` units of `desc`: drawn on a terminal, plain periodic lines elsewhere, nothing
    when not `enabled`. `kwargs` go to tqdm (initial, leave, ...)."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(kwargs.get("iterable"), total=total, disable=True)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit=unit, file=stream, **kwargs)
    try:
        seconds = float(os.environ.get("CANONSTORE_PROGRESS_SECONDS", DEFAULT_SECONDS))
    except ValueError:  # "30s": the default rather than a traceback in every command
        seconds = DEFAULT_SECONDS
    kwargs.pop("leave", None)  # a log keeps every line anyway
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=_Lines(stream),
        mininterval=seconds,
        maxinterval=max(seconds, 10.0),
        ascii=True,
        ncols=100,
        **kwargs,
    )
