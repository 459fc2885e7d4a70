"""The baselines a trained model must beat: persistence, and a climatology of harmonics in the time of year and day.

- persistence: the target is the input at t. Needs no training.
- climatology: per channel and grid point, the train mean as a function of day of year and hour,
  fitted in one pass as a few annual and diurnal harmonics (a smooth day-of-year x hour mean: three
  train years give only three values per raw (day, hour) bin). With no harmonics it is the plain
  per-point train mean, about 0 in normalised space. A fitted climatology is also the anomaly
  correlation's reference (`reference_climatology`).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn

from canonstore._time import as_days
from canonstore.errors import ConfigError
from canonstore.formats.shards import take_fields
from canonstore.training.config import DEFAULTS
from canonstore.training.metrics import validity


class Persistence(nn.Module):
    """Forecast = the input at t of each target channel (`source`: their positions among the inputs)."""

    def __init__(self, source: list[int]):
        super().__init__()
        self.register_buffer("source", torch.tensor(source, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.source]


def basis_size(annual: int, diurnal: int) -> int:
    """Columns of `time_basis`: the constant, a cos and a sin per harmonic, 4 products if both."""
    return 1 + 2 * (annual + diurnal) + (4 if annual and diurnal else 0)


def time_phases(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of its year, fraction of its day) of each time, in float64.

    `times` are decoded datetimes (numpy or cftime: 360_day and noleap years have their own length).
    """
    try:
        t = xr.DataArray(times, dims="time").dt
        hours = t.hour.values + t.minute.values / 60
        year = (t.dayofyear.values - 1 + hours / 24) / t.days_in_year.values
    except (AttributeError, TypeError) as exc:
        raise ConfigError(
            "climatology: the store's time axis holds no dates, so there is no day of year; "
            "set climatology.annual_harmonics=0 and climatology.diurnal_harmonics=0 for "
            "the plain train mean"
        ) from exc
    return year, hours / 24


def time_basis(times: np.ndarray, annual: int, diurnal: int) -> np.ndarray:
    """(time, basis) float64: 1, annual and diurnal harmonics, and their first-order products."""
    columns = [np.ones(len(times))]
    if annual or diurnal:
        year, day = time_phases(times)
        for period, harmonics in ((year, annual), (day, diurnal)):
            for k in range(1, harmonics + 1):
                columns += [np.cos(2 * np.pi * k * period), np.sin(2 * np.pi * k * period)]
        if annual and diurnal:  # the diurnal cycle's amplitude changes with the season
            columns += [a * d for a in columns[1:3] for d in columns[1 + 2 * annual : 3 + 2 * annual]]
    return np.stack(columns, axis=1)


def supported_harmonics(times: np.ndarray, annual: int, diurnal: int) -> tuple[int, int, list[str]]:
    """(annual, diurnal, why any were left out): the harmonics, at most those asked, that a fit on
    `times` (the train steps) pins down where the store's other steps fall.

    Annual harmonic k is kept only when no stretch of the year that `times` leave out is as long as
    half its period (1 / 2k year): about a year of train data for the annual cycle. Fitted on 20 days,
    it would extrapolate the fit's trend over the rest of the year (a meaningless climatology, and an
    ACC near 1 for any forecast). The diurnal harmonics need train steps over a whole day: the steps
    of a regular time axis fall at the same hours every day, so the val and test steps are then at
    hours the train saw (what the sampling cannot resolve, e.g. any diurnal cycle of daily steps, is
    left to lstsq, see `Climatology.fit`). A time axis without dates raises ConfigError (`time_phases`).
    """
    if not (annual or diurnal) or len(times) == 0:
        return annual, diurnal, []
    year = time_phases(times)[0]
    why = []
    gap = _largest_gap(year)
    kept = annual
    while kept and gap >= 1 / (2 * kept):
        kept -= 1
    if kept < annual:
        why.append(
            f"annual harmonics {annual} -> {kept}: the train steps leave {gap:.1%} of the year unseen "
            f"(harmonic k needs no gap of 1/2k year or more)"
        )
    if diurnal and _days(times) < 1 - 1e-9:
        why.append(f"diurnal harmonics {diurnal} -> 0: the train steps cover less than a day")
        diurnal = 0
    return kept, diurnal, why


def _largest_gap(phases: np.ndarray) -> float:
    """The longest stretch of the cycle (0..1, circular) holding none of `phases`."""
    seen = np.unique(np.mod(phases, 1.0))
    return float(np.diff(np.concatenate([seen, seen[:1] + 1])).max())


def _days(times: np.ndarray) -> float:
    """Days from the first to the last of `times`, plus one usual step (the last step's own span)."""
    days = as_days(np.asarray(times))
    return float(days.max() - days.min() + (np.median(np.diff(days)) if days.size > 1 else 0.0))


class Climatology(nn.Module):
    """Forecast = coefficients (basis, channel, *space) x the time basis of the target's valid time."""

    needs_time = True  # called as model(x, basis), basis (batch, n_basis) or (batch, lead, n_basis) from `time_basis`

    def __init__(self, channels: int, space: tuple[int, ...], annual: int, diurnal: int):
        super().__init__()
        self.annual, self.diurnal = annual, diurnal
        self.register_buffer("coef", torch.zeros((basis_size(annual, diurnal), channels) + tuple(space)))

    def forward(self, x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # a bf16 sum would cost the baseline precision
            if basis.ndim == 2:
                return torch.einsum("bk,k...->b...", basis.to(self.coef), self.coef)
            out = torch.einsum("blk,k...->bl...", basis.to(self.coef), self.coef)  # per lead, stacked
            return out.reshape(out.shape[0], -1, *out.shape[3:])

    def fit(
        self,
        array: np.ndarray,
        steps: np.ndarray,
        times: np.ndarray,
        targets: np.ndarray,
        valid: list | None = None,
        memory: int = 256 * 2**20,
    ) -> None:
        """Least squares on the train `steps` of `array` (time, channel, *space), in one streaming pass.

        `valid` (from `training.metrics.validity`): per target, None or (its `_valid` channel, threshold in stored
        units); such a target is fitted point by point on observed steps only, filled steps weighing 0.
        """
        basis = time_basis(times[steps], self.annual, self.diurnal)
        xtx = basis.T @ basis
        xty = np.zeros((basis.shape[1], int(np.prod(self.coef.shape[1:]))))
        # Steps per read: the target fields of a block fit in `memory` as float64; no other channel is read.
        block = max(1, memory // (8 * xty.shape[1]))
        for start in range(0, steps.size, block):
            values = take_fields(array, steps[start : start + block], targets)
            xty += basis[start : start + block].T @ values.reshape(values.shape[0], -1).astype(np.float64)
        # lstsq, not solve: harmonics a sampling rate cannot see (e.g. 12 h at 6-hourly) make xtx singular
        coef = np.linalg.lstsq(xtx, xty, rcond=None)[0].reshape(self.coef.shape)
        for c, mask in enumerate(valid or []):
            if mask is not None:
                coef[:, c] = _masked_fit(array, steps, basis, int(targets[c]), *mask, memory).reshape(coef[:, c].shape)
        self.coef.copy_(torch.from_numpy(coef))


def _masked_fit(
    array, steps, basis, channel: int, valid_channel: int, threshold: float, memory: int = 256 * 2**20
) -> np.ndarray:
    """(basis, points) least squares per grid point, each over the steps where it was observed.

    Each point has its own normal equations (basis x basis), so the points are taken in groups that
    fit in `memory` bytes, one streaming pass over the train steps per group.
    """
    k = basis.shape[1]
    points = int(np.prod(array.shape[2:]))
    coef = np.zeros((k, points))
    group = max(1, memory // (8 * k * k))
    block = max(1, memory // (16 * points))  # steps per read: the two fields, as float64
    for first in range(0, points, group):
        part = slice(first, min(points, first + group))
        xtx, xty = np.zeros((part.stop - first, k, k)), np.zeros((part.stop - first, k))
        for start in range(0, steps.size, block):
            rows = take_fields(array, steps[start : start + block], [channel, valid_channel])
            observed = (rows[:, 1].reshape(len(rows), -1)[:, part] > threshold).astype(np.float64)
            values = rows[:, 0].reshape(len(rows), -1)[:, part].astype(np.float64)
            b = basis[start : start + block]
            xtx += np.einsum("tk,tl,tp->pkl", b, b, observed)
            xty += np.einsum("tk,tp->pk", b, observed * values)
        coef[:, part] = (np.linalg.pinv(xtx) @ xty[..., None])[..., 0].T  # min-norm, as lstsq above
    return coef


def reference_climatology(store, targets: np.ndarray) -> Climatology:
    """The `climatology` model with default harmonics fitted on the train split: the reference the
    anomaly correlation (ACC) is computed against. Only the harmonics the train split supports are
    fitted (`supported_harmonics`; what was left out and why is its `notes`); a time axis without
    dates gets the plain train mean."""
    annual, diurnal = DEFAULTS["climatology"]["annual_harmonics"], DEFAULTS["climatology"]["diurnal_harmonics"]
    train = store.split_indices("train")
    try:
        annual, diurnal, notes = supported_harmonics(store.time[train], annual, diurnal)
    except ConfigError:
        annual = diurnal = 0
        notes = ["the store's time axis holds no dates: the plain train mean"]
    model = Climatology(len(targets), store.shape[2:], annual, diurnal)
    model.fit(store.array, train, store.time, targets, validity(store, targets))
    model.notes = notes
    return model.eval()


def describe_climatology(model: Climatology) -> dict:
    """What a fitted climatology is, for a scores file: its harmonics and what was left out, and why."""
    return {
        "fitted_on": "train split",
        "annual_harmonics": model.annual,
        "diurnal_harmonics": model.diurnal,
        "left_out": list(getattr(model, "notes", [])),
    }
