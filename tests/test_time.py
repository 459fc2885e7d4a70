"""Time axes (canonstore/_time.py): dates told apart from numbers alike everywhere, days, labels for messages."""

import cftime
import numpy as np

from canonstore._time import as_days, duration_label, is_dates, span, time_label


def test_dates_are_datetime64_or_cftime_in_any_calendar_and_nothing_else():
    hourly = np.arange("2000-01-01T00", "2000-01-01T04", dtype="datetime64[h]")
    day360 = np.array([cftime.Datetime360Day(2000, 2, d) for d in (29, 30)])
    assert is_dates(hourly) and is_dates(day360)
    assert not is_dates(np.arange(4)) and not is_dates(np.array([], dtype=object))
    assert not is_dates(np.array(["2000-01-01"], dtype=object))  # text is not a date


def test_days_count_each_calendar_own_length():
    day360 = np.array([cftime.Datetime360Day(2000, 2, 30), cftime.Datetime360Day(2000, 3, 1)])
    assert np.diff(as_days(day360)).tolist() == [1.0]  # 30 February exists, and 1 March follows it
    noleap = np.array([cftime.DatetimeNoLeap(2000, 2, 28), cftime.DatetimeNoLeap(2000, 3, 1)])
    assert np.diff(as_days(noleap)).tolist() == [1.0]
    six_hourly = np.array(["2000-01-01T00", "2000-01-01T06"], dtype="datetime64[ns]")
    assert as_days(six_hourly).tolist() == [0.0, 0.25]
    assert as_days(np.arange(3)) is None


def test_labels_are_minutes_unless_the_time_has_seconds():
    assert time_label(np.datetime64("2000-01-01T06:00:00.000000000")) == "2000-01-01T06:00"
    assert time_label(np.datetime64("2000-01-01T06:00:01.500")) == "2000-01-01T06:00:01.500"
    assert time_label(cftime.Datetime360Day(2000, 2, 30)) == "2000-02-30 00:00:00"
    assert time_label(np.int64(12)) == "12"
    times = np.array(["2000-01-01T00", "2000-12-31T18"], dtype="datetime64[ns]")
    assert span(times) == "2000-01-01T00:00 .. 2000-12-31T18:00" and span(times[:0], empty="-") == "-"
    assert [duration_label(d) for d in (0.25, 3.0, 30 / 86400)] == ["6 hours", "3 days", "30 seconds"]
