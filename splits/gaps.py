"""Gaps in a time axis: where consecutive steps are further apart than the usual step.

A window of consecutive samples (history, lead) must never span a gap, exactly as it never spans a
split boundary: `find_gaps` gives the steps after which the axis jumps, and the build records them
in the store (`gap_after`), so readers never have to guess the usual step.
"""

from __future__ import annotations

import numpy as np

from canonstore._time import as_days


def find_gaps(times: np.ndarray) -> tuple[list[int], float | None]:
    """(steps after which the axis jumps by more than 1.5 usual steps, the usual step in days).

    The usual step is the median spacing; an axis without dates, or of fewer than 3 steps, has no gaps.
    """
    t = as_days(np.asarray(times))
    if t is None or t.size < 3:
        return [], None
    step = np.diff(t)
    usual = float(np.median(step))
    return [int(i) for i in np.flatnonzero(step > 1.5 * usual)], usual


def segment_ids(n: int, gaps) -> np.ndarray:
    """(n,) int: the run of consecutive steps each step belongs to (a new run starts after each gap)."""
    breaks = np.zeros(n, dtype=np.int64)
    gaps = np.asarray(list(gaps), dtype=np.int64)
    breaks[gaps[(gaps >= 0) & (gaps < n - 1)] + 1] = 1
    return np.cumsum(breaks)
