"""Forecast models on (batch, channel, *space) fields, and the baselines they must beat.

    model = build_model(run, dataset, store)      # run: a resolved config (training.config)

- unet: pads like a sphere on a global grid: circular along longitude (the dateline is not an edge)
  and replicate along latitude (there is nothing beyond a pole to wrap to); on a regional grid (the
  store's `longitude_periodic` false) replicate along both; `width` channels at full resolution.
- mlp: the same small network at every grid point (1x1), no spatial context; works on any space.
- persistence: the target is the input at t. Needs no training.
- climatology: per channel and grid point, the train mean as a function of day of year and hour,
  fitted in one pass as a few annual and diurnal harmonics (a smooth day-of-year x hour mean: three
  train years give only three values per raw (day, hour) bin). With no harmonics it is the plain
  per-point train mean, about 0 in normalised space.
unet and mlp predict the change from persistence when `residual` is set. With several leads
(`lead: [1, 2, 4]`) every model forecasts all of them at once, stacked along channels; with `rollout: K`
a trained model forecasts one lead and is run K times on its own output (`Rollout`).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

from canonstore._time import as_days
from canonstore.errors import ConfigError
from canonstore.formats.shards import take_fields


def sphere_pad(x: torch.Tensor, lat: int, lon: int, *, periodic: bool) -> torch.Tensor:
    """Pad `lat` rows (replicate) and `lon` columns (circular when `periodic`, else replicate) on each side."""
    if lon:
        x = F.pad(x, (lon, lon, 0, 0), mode="circular" if periodic else "replicate")
    if lat:
        x = F.pad(x, (0, 0, lat, lat), mode="replicate")
    return x


class SphereConv(nn.Module):
    """3x3 convolution with sphere padding, normalisation and GELU."""

    def __init__(self, c_in: int, c_out: int, periodic: bool):
        super().__init__()
        self.periodic = periodic
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=0, bias=False)
        self.norm = nn.GroupNorm(min(8, c_out), c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(sphere_pad(x, 1, 1, periodic=self.periodic))))


def _block(c_in: int, c_out: int, periodic: bool) -> nn.Sequential:
    return nn.Sequential(SphereConv(c_in, c_out, periodic), SphereConv(c_out, c_out, periodic))


class UNet(nn.Module):
    """A small UNet: `depth` halvings, `width` channels at full resolution (doubling per level).

    `periodic`: whether longitude wraps (a global grid, the store's `longitude_periodic`); a regional
    grid's east and west edges are padded like the poles. Grids whose sides are not multiples of
    2**depth are padded the same way up to one and cropped back.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, depth: int = 3, *, periodic: bool):
        super().__init__()
        widths = [width * 2**k for k in range(depth + 1)]
        self.depth, self.periodic = depth, periodic
        self.down = nn.ModuleList(
            [_block(in_channels, widths[0], periodic)]
            + [_block(widths[k], widths[k + 1], periodic) for k in range(depth)]
        )
        self.up = nn.ModuleList(
            [_block(widths[k + 1] + widths[k], widths[k], periodic) for k in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_lat, n_lon = x.shape[-2:]
        m = 2**self.depth
        pad_lat, pad_lon = (-n_lat) % m, (-n_lon) % m
        if pad_lat or pad_lon:
            x = F.pad(
                F.pad(x, (0, pad_lon, 0, 0), mode="circular" if self.periodic else "replicate"),
                (0, 0, 0, pad_lat),
                mode="replicate",
            )
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)[..., :n_lat, :n_lon]


class MLP(nn.Module):
    """`layers` hidden layers of `width` applied to each grid point's channel vector."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 128, layers: int = 2):
        super().__init__()
        sizes = [in_channels] + [width] * layers
        hidden = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.GELU())]
        self.net = nn.Sequential(*hidden, nn.Linear(sizes[-1], out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.movedim(1, -1)).movedim(-1, 1)


class Persistence(nn.Module):
    """Forecast = the input at t of each target channel (`source`: their positions among the inputs)."""

    def __init__(self, source: list[int]):
        super().__init__()
        self.register_buffer("source", torch.tensor(source, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.source]


class Residual(nn.Module):
    """`net` predicts the change from persistence: forecast = input at t + net(inputs)."""

    def __init__(self, net: nn.Module, source: list[int]):
        super().__init__()
        self.net, self.persistence = net, Persistence(source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.persistence(x) + self.net(x)


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


class Rollout(nn.Module):
    """A one-step model run `steps` times on its own forecasts: from the inputs at t, the forecasts
    at t + stride, ..., t + steps x stride, stacked along channels.

    Each step's inputs are the previous ones moved on by one lead: the oldest history step drops out,
    the forecast of every dynamic input channel (`feed`: its position among the outputs) comes in as
    the newest, the static fields stay, and the encodings are computed for the new time, which is why
    such a model is called as model(x, steps=<each sample's store step t>) when it has encodings.
    Gradients flow through every step (the loss is averaged over them).
    """

    def __init__(self, net: nn.Module, steps: int, feed: list[int], history: int, stride: int, encodings=None):
        super().__init__()
        self.net, self.steps, self.history, self.stride, self.encodings = net, steps, history, stride, encodings
        self.register_buffer("feed", torch.tensor(feed, dtype=torch.long))
        self.needs_steps = encodings is not None

    def forward(self, x: torch.Tensor, steps: np.ndarray | None = None) -> torch.Tensor:
        if self.encodings is not None and steps is None:
            raise ValueError(
                "this rollout model has encodings: call it as model(x, steps=<store step t of each sample>)"
            )
        outputs = []
        for k in range(1, self.steps + 1):
            outputs.append(self.net(x))
            if k < self.steps:
                x = self._advance(x, outputs[-1], None if steps is None else np.asarray(steps) + k * self.stride)
        return torch.cat(outputs, dim=1)

    def _advance(self, x: torch.Tensor, forecast: torch.Tensor, steps) -> torch.Tensor:
        n = self.feed.numel()
        dynamic = (self.history + 1) * n
        encoded = len(self.encodings) if self.encodings is not None else 0
        parts = [x[:, n:dynamic], forecast[:, self.feed].to(x.dtype), x[:, dynamic : x.shape[1] - encoded]]
        if encoded:
            parts.append(self.encodings.fields(steps, x.device).to(x.dtype))
        return torch.cat(parts, dim=1)


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
    from canonstore.training.config import DEFAULTS
    from canonstore.training.metrics import validity

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


def _sources(dataset) -> list[int]:
    """Positions among the inputs (at t) of each target channel."""
    inputs = dataset.input_channels
    missing = [name for name in dataset.target_channels if name not in inputs]
    if missing:
        raise ConfigError(
            f"persistence and residual models need every target among the inputs at t; "
            f"{missing} are not (inputs: {inputs})"
        )
    return [inputs.index(name) for name in dataset.target_channels]


def load_weights(model: nn.Module, state: dict) -> None:
    """Load a checkpoint's `state` into `model`. A rollout's weights are its one-step model's, so a
    rollout takes a one-step model's weights and the reverse (fine-tuning, other rollout lengths)."""
    if "feed" in state:  # saved by a rollout: its one-step model
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    (model.net if isinstance(model, Rollout) else model).load_state_dict(state)


def feed_of(dataset) -> list[int]:
    """Positions among the targets of each dynamic input channel: what a rollout feeds back."""
    targets = dataset.target_channels
    inputs = [dataset.store_channels[c] for c in dataset.channels]
    missing = [name for name in inputs if name not in targets]
    if missing:
        raise ConfigError(
            f"rollout feeds the model's forecast back as its next input, so every input channel must be "
            f"a target; {missing} are not (targets: {targets}): add them to `targets` or leave them "
            f"out of `channels`"
        )
    return [targets.index(name) for name in inputs]


def build_model(run: dict, dataset) -> nn.Module:
    """The model `run["model"]` for `dataset`'s inputs and targets (untrained; climatology unfitted).

    It forecasts every lead of `dataset.leads`, stacked along channels: at once, or (rollout) one
    lead at a time, fed back."""
    name, args = run["model"], run["model_args"]
    rollout = run.get("rollout", 1) if name in ("unet", "mlp") else 1
    leads = 1 if rollout > 1 else len(dataset.leads)  # the network's own output: one step, or all leads at once
    n_in, n_out, space = len(dataset.input_channels), len(dataset.target_channels), dataset.sample_space
    if name in ("persistence", "coarse-up"):  # coarse-up: downscaling's baseline, the inputs are coarse-upped
        return Persistence(_sources(dataset) * len(dataset.leads))
    if name == "climatology":
        return Climatology(n_out, space, args["annual_harmonics"], args["diurnal_harmonics"])
    if name == "unet":
        if len(space) != 2:
            raise ConfigError(f"unet needs (lat, lon) samples; this store's samples have shape {space} (try mlp)")
        smallest = 2 ** args["depth"]
        if min(space) < smallest:
            fits = int(np.log2(min(space)))
            hint = f"set unet.depth={fits} or less, or use mlp" if fits >= 1 else "use mlp"
            raise ConfigError(
                f"unet.depth={args['depth']} halves the grid {args['depth']} times and needs at least "
                f"{smallest} x {smallest} cells; this store's grid is {space[0]} x {space[1]}: {hint}"
            )
        net = UNet(n_in, n_out * leads, width=args["width"], depth=args["depth"], periodic=dataset.longitude_periodic)
    elif name == "mlp":
        net = MLP(n_in, n_out * leads, width=args["width"], layers=args["layers"])
    else:
        raise ConfigError(f"unknown model {name!r}; choose one of unet, mlp, persistence, climatology")
    model = Residual(net, _sources(dataset) * leads) if run["residual"] else net
    if rollout > 1:
        model = Rollout(model, rollout, feed_of(dataset), dataset.history, dataset.leads[0], dataset.encodings)
    return model
