"""Time axes: are they dates (datetime64 or cftime, any calendar), as days, and as text in messages.

A time axis holds numpy datetime64, cftime objects (noleap, 360_day, ... calendars) or plain numbers
(positions, a session's seconds); everything here says which it is the same way.
"""

from __future__ import annotations

import numpy as np


def is_dates(times) -> bool:
    """Whether `times` holds dates: datetime64, or cftime objects (they carry a calendar)."""
    times = np.asarray(times)
    return times.dtype.kind == "M" or (times.dtype == object and times.size > 0 and hasattr(times.flat[0], "calendar"))


def as_days(times: np.ndarray) -> np.ndarray | None:
    """Times as float days (datetime64 or cftime), or None for an axis that holds no dates."""
    if times.dtype.kind == "M":
        return (times - times[0]) / np.timedelta64(1, "D")
    if is_dates(times):
        import cftime  # cftime times only

        return np.asarray(cftime.date2num(list(times), "days since 1970-01-01", calendar=times[0].calendar))
    return None


def time_label(t) -> str:
    """One time for messages: a datetime64 to the minute (to the millisecond when it has seconds), others as
    they print (cftime: '2000-02-30 00:00:00', a number: '12')."""
    if isinstance(t, np.datetime64):
        return str(np.datetime_as_string(t, unit="m" if t == t.astype("datetime64[m]") else "ms"))
    return str(t)


def span(times: np.ndarray, empty: str = "no steps") -> str:
    """'first .. last' of `times` for messages (`time_label`s), or `empty` for no times."""
    return f"{time_label(times[0])} .. {time_label(times[-1])}" if len(times) else empty


def duration_label(days: float) -> str:
    """A time step for messages: '30 seconds', '6 hours', '1 days'."""
    if days * 24 * 60 < 1:
        return f"{days * 86400:g} seconds"
    return f"{days * 24:g} hours" if days < 1 else f"{days:g} days"
