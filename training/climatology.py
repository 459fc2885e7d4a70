"""The anomaly correlation's reference: the train split's mean per day of year and hour of day, as WeatherBench 2.

    reference = window_climatology(store, targets)      # one pass over the train split's target fields
    reference.fields(valid_times)                         # -> (time, channel, *space) float32, normalised units

WeatherBench 2 (`scripts/compute_climatology.py`, `utils.compute_hourly_climatology_mean_fast`) takes the
mean of each (day of year, hour of day) over its climatology years, then smooths it along the day of year with
a triangular 61-day window that wraps around the year (weight 1 - |k|/30 at k days away). Here the years are
the train split's. Where WB2's years hold every day, a train split may not: a (day, hour) the train split
never saw is left out of the window's weighted mean, and a valid time whose window holds no train step at its
hour of day has no climatology (NaN), so its ACC is undefined and not counted (`Scores`). A filled point
(`<channel>_valid` 0) counts in no mean. A time axis without dates gets the plain train mean.

The harmonic fit (`baselines.reference_climatology`, the `climatology` model's) is the other reference
(`score --acc-reference harmonic`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from canonstore._time import is_dates
from canonstore.errors import ConfigError
from canonstore.formats.shards import take_fields
from canonstore.training.metrics import validity

WINDOW_DAYS = 61  # WB2's window_size: days, centred, odd
MEMORY = 256 * 2**20  # bytes of train fields read at once


def day_and_minute(times: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(day of year from 1, minute of day, the calendar's longest year) of each of `times` (datetime64 or
    cftime); the year wraps at that length (366 in the standard calendar, as WB2's `dayofyear` 1..366)."""
    t = xr.DataArray(np.asarray(times), dims="time").dt
    year = int(np.max(t.days_in_year.values)) if len(times) else 366
    return t.dayofyear.values.astype(np.int64), (t.hour.values * 60 + t.minute.values).astype(np.int64), year


@dataclass
class WindowClimatology:
    """Per (minute of day, day of year) the train split saw: the mean field of each target (normalised units,
    NaN where every train value was filled); `fields` smooths them over `window` days."""

    minute: np.ndarray  # (slot,) minute of day
    day: np.ndarray  # (slot,) day of year, from 1
    means: np.ndarray  # (slot, channel, *space) float32
    year: int  # the calendar's longest year, in days
    window: int = WINDOW_DAYS
    dated: bool = True
    _cache: dict = field(default_factory=dict, repr=False)

    def fields(self, times: np.ndarray) -> torch.Tensor:
        """The climatology at each of `times` (any shape: (time,) or (time, lead)), as a float32 tensor of shape
        times.shape + (channel, *space); several leads are stacked along channels, nearest first."""
        times = np.asarray(times)
        flat = times.reshape(-1)
        if self.dated:
            days, minutes, _ = day_and_minute(flat)
        else:
            days = minutes = np.zeros(flat.size, dtype=np.int64)
        out = np.stack([self._at(int(d), int(m)) for d, m in zip(days, minutes)]) if flat.size else None
        if out is None:
            return torch.zeros((0,) + self.means.shape[1:])
        out = out.reshape(times.shape + self.means.shape[1:])
        if times.ndim == 2:  # (time, lead, channel, ...) -> (time, lead x channel, ...)
            out = out.reshape(times.shape[0], -1, *self.means.shape[2:])
        return torch.from_numpy(out)

    def _at(self, day: int, minute: int) -> np.ndarray:
        if not self.dated:
            return self.means[0].astype(np.float32)
        if minute not in self._cache:
            self._cache[minute] = self._smoothed(minute)
        return self._cache[minute][day - 1]

    def _smoothed(self, minute: int) -> np.ndarray:
        """(day of year, channel, *space) float32: every day's window mean at `minute`, as one circular
        convolution along the days (FFT): the triangle's weights over the days the train split saw there,
        divided by the weights of those days (per point: a NaN mean, filled at every step, weighs 0). Done a
        block of points at a time, so that the float64 work arrays stay within MEMORY."""
        rows = np.flatnonzero(self.minute == minute)
        means = self.means[rows].reshape(rows.size, -1)
        half = self.window // 2
        kernel = np.zeros(self.year)
        for k in range(-half + 1, half):  # weight 1 - |k|/half; 0 at |k| = half, as WB2's
            kernel[k % self.year] += 1 - abs(k) / half
        spectrum = np.fft.rfft(kernel)[:, None]
        out = np.empty((self.year, means.shape[1]), np.float32)
        step = max(1, MEMORY // (8 * 8 * self.year))  # points per block: ~8 float64 arrays of (year, points)
        for a in range(0, means.shape[1], step):
            part = means[:, a : a + step]
            values, seen = np.zeros((self.year, part.shape[1])), np.zeros((self.year, part.shape[1]))
            finite = np.isfinite(part)
            values[self.day[rows] - 1] = np.where(finite, part, 0)
            seen[self.day[rows] - 1] = finite
            weight = np.fft.irfft(np.fft.rfft(seen, axis=0) * spectrum, n=self.year, axis=0)
            total = np.fft.irfft(np.fft.rfft(values, axis=0) * spectrum, n=self.year, axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, a : a + step] = np.where(weight > 1e-9, total / weight, np.nan)  # no train day in reach: NaN
        return out.reshape((self.year,) + self.means.shape[1:])

    def describe(self) -> dict:
        """What this reference is, for a scores file."""
        if not self.dated:
            return {"kind": "train mean", "fitted_on": "train split", "why": "the store's time axis holds no dates"}
        return {
            "kind": "day of year x hour of day, smoothed (WeatherBench 2)",
            "fitted_on": "train split",
            "window_days": self.window,
            "hours_of_day": sorted({round(m / 60, 3) for m in self.minute.tolist()}),
            "days_of_year_seen": int(np.unique(self.day).size),
        }


def window_climatology(store, targets: np.ndarray, window: int = WINDOW_DAYS) -> WindowClimatology:
    """The train split's day-of-year x hour-of-day climatology of `targets` (positions among the store's
    channels), in one streaming pass over their fields."""
    train = store.split_indices("train")
    targets = np.asarray(targets, dtype=np.int64)
    dated = is_dates(store.time)
    if dated:
        days, minutes, year = day_and_minute(store.time)
        days, minutes = days[train], minutes[train]
    else:
        days = minutes = np.zeros(train.size, dtype=np.int64)
        year = 1
    slots, slot_of = np.unique(np.stack([minutes, days], axis=1), axis=0, return_inverse=True)
    slot_of = slot_of.reshape(-1)
    space = store.shape[2:]
    masks = validity(store, targets)
    check_memory(len(slots), targets.size, int(np.prod(space)), any(mask is not None for mask in masks))
    # (slot, channel, *space) float32: slots x targets x points x 4 bytes (120 MB for 40 years of 6-hourly
    # ERA5 at 64 x 32, 10 targets); counts per point only where a target has filled points
    sums = np.zeros((len(slots), targets.size) + space, np.float32)  # a slot sums a few dozen years: float32 holds it
    masked = any(mask is not None for mask in masks)
    counts = np.zeros_like(sums) if masked else np.bincount(slot_of, minlength=len(slots)).astype(np.float32)
    block = max(1, MEMORY // max(1, 8 * targets.size * int(np.prod(space))))
    for start in range(0, train.size, block):
        steps = train[start : start + block]
        values = take_fields(store.array, steps, targets).astype(np.float32)
        if masked:
            observed = np.ones(values.shape, dtype=bool)
            for c, mask in enumerate(masks):
                if mask is not None:
                    observed[:, c] = take_fields(store.array, steps, [mask[0]])[:, 0] > mask[1]
            values = np.where(observed, values, 0)
            _add_by_slot(counts, slot_of[start : start + block], observed)
        _add_by_slot(sums, slot_of[start : start + block], values)
    if not masked:
        counts = counts.reshape((-1,) + (1,) * (sums.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts  # NaN where a point was filled at every step of the slot
    return WindowClimatology(slots[:, 0], slots[:, 1], means, year, window, dated)


def _add_by_slot(total: np.ndarray, slots: np.ndarray, values: np.ndarray) -> None:
    """total[slots[i]] += values[i] for every i, repeated slots summed (np.add.at's result, one reduceat fast)."""
    order = np.argsort(slots, kind="stable")
    kept, starts = np.unique(slots[order], return_index=True)
    total[kept] += np.add.reduceat(values[order].astype(total.dtype), starts, axis=0)


def check_memory(slots: int, channels: int, points: int, masked: bool) -> None:
    """Refuse, in one line, a climatology larger than a quarter of this machine's memory (or
    CANONSTORE_CLIMATOLOGY_GB): its sums are slots x channels x points float32 (twice with filled points),
    and as much again smoothed."""
    need = slots * channels * points * 4 * (2 if masked else 1) * 2  # the sums, and the smoothed days
    limit = os.environ.get("CANONSTORE_CLIMATOLOGY_GB")
    budget = float(limit) * 2**30 if limit else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4
    if need > budget:
        raise ConfigError(
            f"the ACC's day-of-year x hour climatology needs {need / 2**30:.1f} GiB ({slots} (day, hour) slots x "
            f"{channels} channels x {points} points x {need // (slots * channels * points)} bytes), "
            f"over {budget / 2**30:.1f} GiB "
            "(CANONSTORE_CLIMATOLOGY_GB, default a quarter of memory): use --acc-reference harmonic, or fewer channels"
        )


@dataclass
class HarmonicReference:
    """The harmonic fit (`baselines.reference_climatology`) behind the same `fields` as `WindowClimatology`."""

    model: object  # a fitted baselines.Climatology

    def fields(self, times: np.ndarray) -> torch.Tensor:
        from canonstore.training.baselines import time_basis

        times = np.asarray(times)
        basis = time_basis(times.reshape(-1), self.model.annual, self.model.diurnal)
        basis = torch.from_numpy(basis.reshape(times.shape + (-1,))).to(self.model.coef.device)
        with torch.inference_mode():
            return self.model(torch.empty(0), basis).float().cpu()

    def describe(self) -> dict:
        from canonstore.training.baselines import describe_climatology

        return {"kind": "harmonic fit", **describe_climatology(self.model)}


ACC_REFERENCES = ("window", "harmonic")


def acc_reference(store, targets: np.ndarray, kind: str = "window"):
    """The ACC's reference climatology of `targets`: WB2's day-of-year x hour window (`window`, the default)
    or the harmonic fit (`harmonic`); either has `fields(valid_times)` and `describe()`."""
    if kind == "window":
        return window_climatology(store, targets)
    if kind == "harmonic":
        from canonstore.training.baselines import reference_climatology

        return HarmonicReference(reference_climatology(store, targets))
    raise ValueError(f"acc reference: expected one of {', '.join(ACC_REFERENCES)}, got {kind!r}")
