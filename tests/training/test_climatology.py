"""The ACC's reference: the train split's day-of-year x hour-of-day means, smoothed over 61 days as WeatherBench 2."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from canonstore.formats import open_store
from canonstore.preprocess import build
from canonstore.training.climatology import WINDOW_DAYS, acc_reference, window_climatology
from tests.helpers import write_recipe

HALF = WINDOW_DAYS // 2


def wb2_window_weights() -> np.ndarray:
    """WeatherBench 2's create_window_weights(61): linear up, then down, mean 1."""
    weights = np.concatenate([np.linspace(0, 1, HALF + 1), np.linspace(1, 0, HALF + 1)[1:]])
    return weights / weights.mean()


def wb2_hourly_climatology(obs: xr.DataArray) -> xr.DataArray:
    """WB2's compute_hourly_climatology_mean_fast, written from its source: per hour, the mean of each day of year
    over the years, then smooth_dayofyear_variable_with_rolling_window (rolls that wrap the 366 days)."""
    weights = wb2_window_weights()
    hours = []
    for hour in np.unique(obs.time.dt.hour.values):
        daily = obs.sel(time=obs.time.dt.hour == hour).groupby("time.dayofyear").mean()
        stacked = [daily.roll(dayofyear=i) * weights[i + HALF] for i in range(-HALF, WINDOW_DAYS - HALF)]
        hours.append(xr.concat(stacked, dim="stack").mean("stack").expand_dims(hour=[hour]))
    return xr.concat(hours, dim="hour")


def seasonal_store(tmp_path, noise: float = 0.0):
    """6-hourly 2000 (a leap year) to 2002 on a 2x3 grid: x = 10 + 5 sin(day of year) + 2 cos(hour) (+ noise).
    Train 2000-2001 (every day of year 1..366), test 2002."""
    times = pd.date_range("2000-01-01", "2002-12-31T18", freq="6h")
    doy, hour = times.day_of_year.values, times.hour.values
    cycle = 10 + 5 * np.sin(2 * np.pi * (doy - 1) / 366) + 2 * np.cos(2 * np.pi * hour / 24)
    values = cycle[:, None, None] + noise * np.random.default_rng(0).normal(size=(times.size, 2, 3))
    xr.Dataset(
        {"x": (("time", "lat", "lon"), values, {"units": "K"})},
        coords={
            "time": times,
            "lat": ("lat", [10.0, -10.0], {"units": "degrees_north"}),
            "lon": ("lon", [0.0, 120.0, 240.0], {"units": "degrees_east"}),
        },
    ).to_netcdf(tmp_path / "x.nc")
    recipe = write_recipe(
        tmp_path, name="seasonal", sources=["x.nc"], splits={"train": [2000, 2001], "test": [2002, 2002]}
    )
    return open_store(build(recipe, tmp_path / "seasonal.zarr", progress=False).path)


def physical(store, fields) -> np.ndarray:
    return fields.numpy().astype(np.float64) * store.stats["std"][0] + store.stats["mean"][0]


def test_a_known_seasonal_cycle_comes_back_smoothed_by_the_window(tmp_path):
    store = seasonal_store(tmp_path)
    reference = window_climatology(store, np.array([0]))
    test = store.split_indices("test")
    got = physical(store, reference.fields(store.time[test]))[:, 0]
    # a triangular window over a sine of period 366 days scales it by sum(w cos(2 pi k / 366)) / sum(w)
    k = np.arange(-HALF, HALF + 1)
    w = 1 - np.abs(k) / HALF
    damping = (w * np.cos(2 * np.pi * k / 366)).sum() / w.sum()
    times = pd.DatetimeIndex(store.time[test])
    expected = (
        10
        + 5 * damping * np.sin(2 * np.pi * (times.day_of_year.values - 1) / 366)
        + 2 * np.cos(2 * np.pi * times.hour / 24)
    )
    assert 0.97 < damping < 0.99
    np.testing.assert_allclose(got, np.broadcast_to(np.asarray(expected)[:, None, None], got.shape), atol=2e-5)
    assert reference.describe()["hours_of_day"] == [0, 6, 12, 18] and reference.describe()["days_of_year_seen"] == 366


def test_equals_weatherbench2s_fast_hourly_climatology(tmp_path):
    store = seasonal_store(tmp_path, noise=3.0)
    train = store.split_indices("train")
    obs = store.to_xarray()["data"].isel(time=train, channel=0).load()
    wb2 = wb2_hourly_climatology(obs)
    times = pd.date_range("2002-01-01", "2002-12-31T18", freq="6h")[::7]  # a spread of days and hours
    got = acc_reference(store, np.array([0])).fields(times.values).numpy()[:, 0]
    expected = np.stack([wb2.sel(hour=t.hour, dayofyear=t.day_of_year).values for t in times])
    assert got.shape == expected.shape == (times.size, 2, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_valid_time_far_from_every_train_day_has_no_climatology(tmp_path):
    """Seen only in January: a July valid time has no train day within 30 days, so no ACC reference (NaN, not
    counted) rather than a value from another season."""
    full = window_climatology(seasonal_store(tmp_path), np.array([0]))
    keep = full.day <= 31
    january = type(full)(full.minute[keep], full.day[keep], full.means[keep], full.year)
    assert bool(np.isnan(january.fields(np.array(["2002-07-01T00"], dtype="datetime64[ns]")).numpy()).all())
    # 15 February (day 46): January's days 17..31 are within the window
    assert bool(np.isfinite(january.fields(np.array(["2002-02-15T00"], dtype="datetime64[ns]")).numpy()).all())


def test_the_harmonic_fit_stays_an_option(tmp_path):
    store = seasonal_store(tmp_path)
    harmonic = acc_reference(store, np.array([0]), "harmonic")
    assert harmonic.describe()["kind"] == "harmonic fit"
    fields = harmonic.fields(store.time[store.split_indices("test")][:8])
    assert fields.shape == (8, 1, 2, 3) and bool(np.isfinite(fields.numpy()).all())
    with pytest.raises(ValueError, match="expected one of window, harmonic"):
        acc_reference(store, np.array([0]), "daily")


def test_a_climatology_too_large_for_memory_is_refused_in_one_line(tmp_path, monkeypatch):
    from canonstore.errors import ConfigError

    store = seasonal_store(tmp_path)
    monkeypatch.setenv("CANONSTORE_CLIMATOLOGY_GB", "0.00001")  # 10 kB: 1464 slots x 6 points x 8 bytes is 70 kB
    with pytest.raises(ConfigError, match=r"needs 0.0 GiB \(1464 \(day, hour\) slots x 1 channels x 6 points"):
        window_climatology(store, np.array([0]))
    assert acc_reference(store, np.array([0]), "harmonic").describe()["kind"] == "harmonic fit"  # the way out


def test_a_360_day_calendar_wraps_its_own_year():
    """Day 360 of a 360_day year is next to day 1: the window wraps at 360, not at WB2's 366."""
    import cftime

    from canonstore.training.climatology import WindowClimatology, day_and_minute

    times = np.array([cftime.Datetime360Day(2001, 12, 30), cftime.Datetime360Day(2001, 1, 1)])
    days, minutes, year = day_and_minute(times)
    assert days.tolist() == [360, 1] and minutes.tolist() == [0, 0] and year == 360
    seen_day_1 = WindowClimatology(np.array([0]), np.array([1]), np.ones((1, 1, 2)), year)
    near_the_end = seen_day_1.fields(np.array([cftime.Datetime360Day(2002, 12, 28)])).numpy()  # 3 days before day 1
    assert np.allclose(near_the_end, 1.0)
    halfway = seen_day_1.fields(np.array([cftime.Datetime360Day(2002, 6, 15)])).numpy()
    assert bool(np.isnan(halfway).all())
