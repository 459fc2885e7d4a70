"""Positional and temporal input channels, computed from the store's coordinates and times on the
batch's device: nothing is stored, nothing is read from disk.

    latlon  sin and cos of latitude and of longitude (4 channels)
    doy     cos and sin of the fraction of the year (2), calendar-aware: a noleap year has 365 days,
            a 360_day year 360, a standard one 365 or 366; the hour counts (6 h = 0.25 day)
    hod     cos and sin of the hour of day, UTC (2)
    toa     top-of-atmosphere incident solar radiation as a fraction of the solar constant (1):
            instantaneous, Spencer (1971) declination and Earth-Sun distance, no equation of time

They describe the input time t (the last input step) of each sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from canonstore._time import is_dates
from canonstore.formats.coords import latitude_field
from canonstore.loaders.windows import encoding_names  # the channels each kind adds: loaders.windows.ENCODINGS


def time_fractions(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of the year, fraction of the day) of each time: datetime64 or cftime (any calendar)."""
    times = np.asarray(times)
    if not is_dates(times):
        raise ValueError(f"time encodings need a time axis of dates; this store's holds {times.dtype} values")
    if times.dtype.kind == "M":
        import pandas as pd

        t = pd.DatetimeIndex(times)
        day = (t.hour + t.minute / 60 + t.second / 3600) / 24
        year_days = np.where(t.is_leap_year, 366, 365)
        return np.asarray((t.day_of_year - 1 + day) / year_days, dtype=np.float64), np.asarray(day, dtype=np.float64)
    day = np.array([(t.hour + t.minute / 60 + t.second / 3600) / 24 for t in times])  # cftime, any calendar
    # The time since 1 January over the year's length, both measured by the calendar itself: a noleap year
    # has 365 days, a 360_day one 360, and `standard` is Julian before 15 October 1582 (1500 has 366 days,
    # 1582 has 355: a leap-year rule or cftime's `dayofyr` would be off by up to 10 days there).
    years: dict = {}
    year = np.empty(len(times))
    for i, t in enumerate(times):
        key = (t.calendar, t.year)
        if key not in years:
            start = t.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
            years[key] = start, (start.replace(year=t.year + 1) - start).total_seconds()
        start, length = years[key]
        year[i] = (t - start).total_seconds() / length
    return year, day


class Encodings:
    """The `kinds` encodings of a store, as (batch, channel, *space) tensors for given time steps."""

    def __init__(self, store, kinds):
        self.kinds = list(kinds)
        self.names = encoding_names(self.kinds)
        self.space = tuple(store.shape[2:])
        self._fields: dict = {}
        if any(k in ("latlon", "toa") for k in self.kinds):
            if store.latitude is None or store.longitude is None:
                raise ValueError(
                    f"encodings {self.kinds} need latitude and longitude; {store.path} records "
                    f"latitude={store.latitude}, longitude={store.longitude}"
                )
            ds, dims = store.to_xarray(), store.dims[2:]
            self.lat = np.deg2rad(latitude_field(ds[store.latitude], dims, self.space))
            self.lon = np.deg2rad(latitude_field(ds[store.longitude], dims, self.space))
        self.year, self.day = time_fractions(store.time) if set(self.kinds) - {"latlon"} else (None, None)

    def __len__(self) -> int:
        return len(self.names)

    def _grid(self, name: str, device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._fields:
            self._fields[key] = torch.from_numpy(getattr(self, name)).to(device, torch.float32)
        return self._fields[key]

    def fields(self, steps: np.ndarray, device="cpu") -> torch.Tensor:
        """(len(steps), len(self), *space) float32 on `device`, for the store's time steps `steps`."""
        steps = np.asarray(steps, dtype=np.int64)
        n, out = steps.size, []
        shape = (n, 1) + (1,) * len(self.space)
        if self.year is not None:
            year = torch.from_numpy(self.year[steps]).to(device, torch.float32).view(shape)
            day = torch.from_numpy(self.day[steps]).to(device, torch.float32).view(shape)
        for kind in self.kinds:
            if kind == "latlon":
                lat, lon = self._grid("lat", device), self._grid("lon", device)
                grid = torch.stack([lat.sin(), lat.cos(), lon.sin(), lon.cos()])
                out.append(grid.expand(n, *grid.shape))
            elif kind in ("doy", "hod"):
                angle = 2 * math.pi * (year if kind == "doy" else day)
                out.append(torch.cat([angle.cos(), angle.sin()], dim=1).expand(n, 2, *self.space))
            else:
                out.append(self._toa(year, day, device))
        return torch.cat(out, dim=1).contiguous()

    def _toa(self, year: torch.Tensor, day: torch.Tensor, device) -> torch.Tensor:
        g = 2 * math.pi * year
        declination = (
            0.006918
            - 0.399912 * g.cos()
            + 0.070257 * g.sin()
            - 0.006758 * (2 * g).cos()
            + 0.000907 * (2 * g).sin()
            - 0.002697 * (3 * g).cos()
            + 0.00148 * (3 * g).sin()
        )
        distance = (
            1.000110 + 0.034221 * g.cos() + 0.001280 * g.sin() + 0.000719 * (2 * g).cos() + 0.000077 * (2 * g).sin()
        )
        lat, lon = self._grid("lat", device), self._grid("lon", device)
        hour_angle = 2 * math.pi * day + lon - math.pi  # solar noon at 12 UTC on the Greenwich meridian
        cos_zenith = lat.sin() * declination.sin() + lat.cos() * declination.cos() * hour_angle.cos()
        return distance * cos_zenith.clamp_min(0)
