"""Gaps in a time axis: where consecutive steps are further apart than the usual step.

A window of consecutive samples (history, lead) must never span a gap, exactly as it never spans a
split boundary: `find_gaps` gives the steps after which the axis jumps, and the build records them
in the store (`gap_after`), so readers never have to guess the usual step.
"""

from __future__ import annotations

import numpy as np

from canonstore._time import as_days

# From this usual step on (days) an axis may step by the calendar: pentads, dekads (8 .. 11 days), months
# (28 .. 31), years (365 or 366). A finer one (daily, hourly) steps by one fixed duration in every calendar.
CALENDAR_STEP_DAYS = 5.0


def step_tolerance(usual: float) -> float:
    """The ratio by which a step may differ from the usual one (days) and still be one step: 1.5 for axes
    that step by the calendar (`CALENDAR_STEP_DAYS`), else 1.1 (a jittered clock's steps pass; 18:00 then
    02:00 on a 6-hourly axis does not: a lead-1 pair across it would span 8 hours)."""
    return 1.5 if usual >= CALENDAR_STEP_DAYS else 1.1


def find_gaps(times: np.ndarray) -> tuple[list[int], float | None]:
    """(steps after which the axis jumps by more than one usual step, the usual step in days).

    The usual step is the median spacing; a jump is a step longer than it by more than `step_tolerance`.
    An axis without dates, or of fewer than 3 steps, has no gaps.
    """
    t = as_days(np.asarray(times))
    if t is None or t.size < 3:
        return [], None
    step = np.diff(t)
    usual = float(np.median(step))
    return [int(i) for i in np.flatnonzero(step > step_tolerance(usual) * usual)], usual


def segment_ids(n: int, gaps) -> np.ndarray:
    """(n,) int: the run of consecutive steps each step belongs to (a new run starts after each gap)."""
    breaks = np.zeros(n, dtype=np.int64)
    gaps = np.asarray(list(gaps), dtype=np.int64)
    breaks[gaps[(gaps >= 0) & (gaps < n - 1)] + 1] = 1
    return np.cumsum(breaks)
