"""Positional and temporal encodings: values at known dates, in every calendar, on the batch's device."""

from __future__ import annotations

import math

import cftime
import numpy as np
import pytest
import torch

from canonstore import open_dataset, open_store
from canonstore.loaders import BatchLoader
from canonstore.loaders.encodings import Encodings, encoding_names, time_fractions


def test_day_and_hour_fractions_follow_each_calendar():
    year, day = time_fractions(np.array(["2000-03-01T00", "2001-03-01T18", "2001-12-31T12"], dtype="datetime64[s]"))
    np.testing.assert_allclose(year, [60 / 366, (59 + 0.75) / 365, (364 + 0.5) / 365])  # 2000 is a leap year
    np.testing.assert_allclose(day, [0, 0.75, 0.5])
    times = np.array(
        [cftime.DatetimeNoLeap(2000, 3, 1), cftime.Datetime360Day(2001, 12, 30, 6), cftime.DatetimeAllLeap(2001, 3, 1)]
    )
    year, day = time_fractions(times)
    np.testing.assert_allclose(year, [59 / 365, (359 + 0.25) / 360, 60 / 366])  # no Feb 29 / 30-day months
    np.testing.assert_allclose(day, [0, 0.25, 0])


def test_the_standard_calendar_keeps_julian_years_before_1582():
    """cftime's `standard` calendar is Julian before 15 October 1582: 1500 is a leap year (366 days) and
    1582 has 355 (4 October is followed by 15 October); the fraction of the year stays in [0, 1)."""
    times = np.array(
        [
            cftime.DatetimeGregorian(1500, 12, 31, 12),
            cftime.DatetimeGregorian(1500, 3, 1),
            cftime.DatetimeGregorian(1582, 12, 31, 12),
            cftime.DatetimeGregorian(1600, 12, 31, 12),
            cftime.DatetimeJulian(1500, 12, 31, 12),
            cftime.DatetimeProlepticGregorian(1500, 12, 31, 12),
        ]
    )
    year, day = time_fractions(times)
    np.testing.assert_allclose(year, [365.5 / 366, 60 / 366, 354.5 / 355, 365.5 / 366, 365.5 / 366, 364.5 / 365])
    np.testing.assert_allclose(day, [0.5, 0, 0.5, 0.5, 0.5, 0.5])


class _Store:
    """What Encodings reads from a store: shape, time, latitude/longitude names and coordinates."""

    def __init__(self, time, lat, lon):
        import xarray as xr

        self.shape, self.dims, self.time, self.path = (
            (len(time), 1, len(lat), len(lon)),
            ("time", "channel", "lat", "lon"),
            time,
            "x",
        )
        self.latitude, self.longitude = "lat", "lon"
        self._ds = xr.Dataset(coords={"lat": ("lat", lat), "lon": ("lon", lon)})

    def to_xarray(self):
        return self._ds


def test_encoding_values_at_known_times_and_places():
    time = np.array(["2000-06-21T12", "2000-06-21T00", "2000-12-21T12"], dtype="datetime64[s]")
    store = _Store(time, np.array([23.44, 0.0, -70.0]), np.array([0.0, 90.0, 180.0]))
    enc = Encodings(store, ["latlon", "doy", "hod", "toa"])
    assert (
        enc.names
        == encoding_names(["latlon", "doy", "hod", "toa"])
        == ["sin_lat", "cos_lat", "sin_lon", "cos_lon", "cos_doy", "sin_doy", "cos_hod", "sin_hod", "toa"]
    )
    f = enc.fields([0, 1, 2]).numpy()
    assert f.shape == (3, 9, 3, 3)
    np.testing.assert_allclose(f[0, 0, :, 0], np.sin(np.deg2rad([23.44, 0, -70])), atol=1e-6)
    np.testing.assert_allclose(f[0, 3, 0], np.cos(np.deg2rad([0, 90, 180])), atol=1e-6)
    np.testing.assert_allclose(f[0, 6:8, 0, 0], [-1, 0], atol=1e-6)  # noon: cos(pi), sin(pi)
    np.testing.assert_allclose(f[1, 6:8, 0, 0], [1, 0], atol=1e-6)  # midnight
    np.testing.assert_allclose(f[0, 4, 0, 0], math.cos(2 * math.pi * (172 + 0.5) / 366), atol=1e-6)
    # toa: the sun overhead near the Tropic of Cancer at noon UTC on the Greenwich meridian in June,
    # night on the antimeridian, and polar night at 70 S in June; at 70 S in December noon, mid height
    assert f[0, 8, 0, 0] == pytest.approx(0.968, abs=0.005)  # Earth near aphelion
    assert f[0, 8, 0, 2] == 0 and f[0, 8, 2, 0] == 0 and f[1, 8, 0, 0] == 0
    assert f[2, 8, 2, 0] == pytest.approx(1.034 * math.cos(math.radians(70 - 23.44)), abs=0.01)


def test_the_loader_appends_encodings_matching_the_per_sample_path(tiny_store):
    store = open_store(tiny_store)
    dataset = open_dataset(store, "val", encodings=["latlon", "doy", "hod", "toa"])
    assert dataset.input_channels[-9:] == encoding_names(["latlon", "doy", "hod", "toa"])
    x, _ = next(iter(BatchLoader(dataset, 4, shuffle=False, device="cpu", workers=1)))
    assert x.shape[1] == len(dataset.input_channels)
    for k in range(4):
        np.testing.assert_allclose(x[k].numpy(), dataset[k][0].numpy(), atol=1e-6)
    hours = (store.time[dataset.times[:4]].astype("datetime64[h]").astype(np.int64) % 24) / 24
    np.testing.assert_allclose(x[:4, -3, 0, 0].numpy(), np.cos(2 * np.pi * hours), atol=1e-6)
    assert torch.isfinite(x).all()
