"""Forecast scores in physical units, area-weighted, with filled points weighing 0.

Errors are summed in normalised units, in float64, and scaled back by each channel's train std:
de-normalising is `x * std + mean`, so the mean cancels in any error and `error * std` is the error
in the channel's own units. Every sum is weighted by each cell's area (WeatherBench 2's normalised cell
areas, `formats.coords.latitude_cell_areas`; the store records which coordinate is latitude) times 0/1
validity: the store's constant `mask`, and per sample the `<channel>_valid` channel of targets whose NaNs
were filled.

Per channel, as WeatherBench 2 defines them (https://github.com/google-research/weatherbench2,
`metrics.py`): each forecast time's area-weighted mean first, then the mean over times:
- `rmse`: the square root of the time-mean of each time's MSE (WB2's RMSE: MSE averaged, then the root);
- `rmse_sqrt_before_time_avg`: the mean over times of each time's RMSE (WB2's RMSESqrtBeforeTimeAvg);
- `mae`, `bias`: the time-mean of each time's mean absolute error and mean error (forecast - truth);
- `acc`: anomaly correlation against the train climatology at the valid time (`training.climatology`):
  sum(w f' o') / sqrt(sum(w f'^2) sum(w o'^2)) per time, uncentred, averaged over times;
- `r2`: 1 - MSE / variance of the target, pooled over the scored set.
"overall" averages channels in normalised units (each counts the same): errors in train stds.
"""

from __future__ import annotations

import numpy as np
import torch

from canonstore.formats.coords import latitude_cell_areas, latitude_field
from canonstore.formats.spec import mask_channel_of, normalisation_scale

# A forecast anomaly this small against the truth's is the climatology itself, up to float32 rounding (a
# forecast file's values): its ACC would correlate rounding errors, so it is undefined, as for exact zeros.
ANOMALY_FLOOR = 1e-4
_SUMS = ("weight", "sq_err", "target", "target_sq", "mse_t", "abs_t", "err_t", "rmse_t", "acc_t", "acc_n", "times")


def lat_weighting(store) -> tuple[np.ndarray | None, str]:
    """(the relative area of every grid cell, or None; what weighting that is, in words).

    A 1-D latitude gets WeatherBench 2's cell areas (`latitude_cell_areas`); a 2-D (curvilinear) one,
    whose cell edges the store does not record, cos(latitude). Only a 2-D grid has cells with an area;
    samples on one dimension (stations, `location`) get no area weighting even when they carry a
    latitude, and the words say so.
    """
    space, dims = store.shape[2:], store.dims[2:]
    if store.latitude is None:
        return None, f"none: the store records no latitude coordinate (dims {dims})"
    if len(space) != 2:
        return None, f"none: the samples are points along {dims}, not grid cells with an area"
    coord = store.to_xarray()[store.latitude]
    if coord.ndim == 1 and coord.dims[0] in dims:
        return latitude_field(coord.copy(data=latitude_cell_areas(coord.values)), dims, space), (
            f"cell area from {store.latitude} (WeatherBench 2)"
        )
    lat = latitude_field(coord, dims, space)
    return np.clip(np.cos(np.deg2rad(lat)), 0, None), f"cos({store.latitude}): a 2-D grid records no cell edges"


def area_weights(store, targets: np.ndarray, lat_weighted: bool = True) -> torch.Tensor:
    """(target channel, *space) float32 weights with mean 1 per channel: each cell's area (`lat_weighting`) on a
    lat/lon grid, 0 where the store's mask says a value was filled rather than observed."""
    space = store.shape[2:]
    weights = np.ones((len(targets),) + space)
    cos_lat = lat_weighting(store)[0] if lat_weighted else None
    if cos_lat is not None:
        weights = weights * cos_lat
    if store.mask is not None:
        weights = weights * store.mask[targets]
    means = weights.reshape(len(targets), -1).mean(axis=1)
    means[means == 0] = 1  # a channel filled everywhere scores nothing rather than dividing by 0
    return torch.from_numpy((weights / means.reshape((-1,) + (1,) * len(space))).astype(np.float32))


def validity(store, targets: np.ndarray) -> list:
    """Per target: None, or (its `<channel>_valid` channel, the stored value above which it means observed)."""
    masks, scale = mask_channel_of(store.channels), normalisation_scale(store.stats["std"])

    def of(name: str) -> tuple[int, float]:  # stored = (v - mean) / scale with v in {0, 1}: observed above 0.5's image
        v = store.channels.index(masks[name])
        return v, float((0.5 - store.stats["mean"][v]) / scale[v])

    return [of(store.channels[int(t)]) if store.channels[int(t)] in masks else None for t in targets]


class TargetMasks:
    """Splits a batch's y into the targets and their 0/1 validity, so that filled points weigh 0 sample
    by sample. y holds, per lead (`dataset.leads`), the targets then the `_valid` channels of
    `dataset.masked_targets`; the targets come out stacked per lead, nearest first."""

    def __init__(self, store, dataset):
        self.n = len(dataset.target_channels)
        self.leads = len(dataset.leads)
        masked = validity(store, dataset.targets) if dataset.masked_targets else []
        self.slots = [target for target, mask in enumerate(masked) if mask is not None]  # y's order after targets
        self.threshold = torch.tensor([mask[1] for mask in masked if mask is not None], dtype=torch.float32)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(targets (batch, lead x target, *space), validity of the same shape as float 0/1, or None when
        nothing was filled)."""
        if self.n * self.leads == y.shape[1]:
            return y, None
        b, space = y.shape[0], y.shape[2:]
        per_lead = y.reshape(b, self.leads, -1, *space)
        targets, extra = per_lead[:, :, : self.n], per_lead[:, :, self.n :]
        shape = (1, 1, -1) + (1,) * len(space)
        observed = (extra > self.threshold.to(y.device).view(shape)).to(torch.float32)
        valid = torch.ones_like(targets, dtype=torch.float32)
        valid[:, :, self.slots] = observed
        return targets.reshape(b, -1, *space), valid.reshape(b, -1, *space)


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """The training loss: area-weighted mean squared error in normalised units (float32); points with
    `valid` 0 (filled) weigh nothing. When prediction and target stack several leads (or rollout steps)
    along channels, `weights` given for one lead, the loss is the mean over leads of each lead's loss."""
    n = weights.shape[weights.ndim - target.ndim + 1]  # target channels per lead ((batch,) channel, *space)
    losses = []
    for k in range(target.shape[1] // n):
        part = slice(k * n, (k + 1) * n)
        w = (weights if valid is None else weights * valid[:, part]).expand_as(target[:, part])
        losses.append(
            ((prediction[:, part].float() - target[:, part].float()) ** 2 * w).sum() / w.sum().clamp_min(1e-12)
        )
    return torch.stack(losses).mean()


class Scores:
    """Running weighted sums per channel over batches of (prediction, target), normalised units."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights.double()
        self.sums = torch.zeros((len(_SUMS), weights.shape[0]), dtype=torch.float64, device=weights.device)
        self.samples = 0

    def update(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor | None = None,
        climatology: torch.Tensor | None = None,
    ) -> None:
        """Add a batch; `valid` (0/1 per point) from TargetMasks, `climatology` the train climatology
        at each sample's valid time (normalised units) for the ACC."""
        w = self.weights.expand_as(target) if valid is None else self.weights * valid.double()
        live = w > 0  # a value where nothing weighs (land in an ocean file: often NaN) never reaches a sum
        target = torch.where(live, target.double(), 0)
        prediction = torch.where(live, prediction.double(), 0)
        error = prediction - target
        space = list(range(2, target.ndim))
        per_time = w.sum(space)  # (batch, channel)
        has = per_time > 0
        mse_t = (w * error**2).sum(space) / per_time.clamp_min(1e-300)  # each time's area-weighted mean
        acc_t = torch.zeros_like(per_time)
        acc_n = torch.zeros_like(per_time)
        if climatology is not None:  # a point without climatology (filled at every train step) weighs 0 here
            known = live & torch.isfinite(climatology)
            wa, clim = torch.where(known, w, 0), torch.where(known, climatology.double(), 0)
            f, o = torch.where(known, prediction - clim, 0), torch.where(known, target - clim, 0)
            ff, oo = (wa * f**2).sum(space), (wa * o**2).sum(space)
            denominator = torch.sqrt(ff * oo)
            ok = has & (oo > 0) & (ff > ANOMALY_FLOOR**2 * oo)
            acc_t = torch.where(ok, (wa * f * o).sum(space) / denominator.clamp_min(1e-300), acc_t)
            acc_n = ok.double()
        self.sums += torch.stack(
            [
                w.sum([0] + space),
                (w * error**2).sum([0] + space),
                (w * target).sum([0] + space),
                (w * target**2).sum([0] + space),
                torch.where(has, mse_t, 0).sum(0),
                torch.where(has, (w * error.abs()).sum(space) / per_time.clamp_min(1e-300), 0).sum(0),
                torch.where(has, (w * error).sum(space) / per_time.clamp_min(1e-300), 0).sum(0),
                torch.where(has, torch.sqrt(mse_t), 0).sum(0),
                acc_t.sum(0),
                acc_n.sum(0),
                has.double().sum(0),
            ]
        )
        self.samples += target.shape[0]

    def part(self, channels: slice) -> Scores:
        """The sums of `channels` only (e.g. one lead of several stacked along channels)."""
        part = Scores(self.weights[channels])
        part.sums, part.samples = self.sums[:, channels].clone(), self.samples
        return part

    def all_reduce(self) -> None:
        """Sum over the processes of a distributed run (each scored its own samples)."""
        import torch.distributed as dist

        samples = torch.tensor([self.samples], dtype=torch.float64, device=self.sums.device)
        dist.all_reduce(self.sums)
        dist.all_reduce(samples)
        self.samples = int(samples.item())

    def result(self, names: list[str], scale: np.ndarray, units: list[str]) -> dict:
        """{"loss", "samples", "overall": {...}, "channels": {name: {rmse, rmse_sqrt_before_time_avg, mae, bias,
        acc, r2, units}}}.

        `scale`: each channel's normalisation divisor (its train std), to turn errors into its `units`.
        """
        s = dict(zip(_SUMS, self.sums.cpu().numpy()))
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(s["weight"] > 0, s["weight"], np.nan)
            mse = s["sq_err"] / weight  # pooled: the training loss and R²
            variance = s["target_sq"] / weight - (s["target"] / weight) ** 2
            times = np.where(s["times"] > 0, s["times"], np.nan)
            rmse, mae, bias = np.sqrt(s["mse_t"] / times), s["abs_t"] / times, s["err_t"] / times
            rmse_before = s["rmse_t"] / times
            acc = s["acc_t"] / np.where(s["acc_n"] > 0, s["acc_n"], np.nan)
            both = np.isfinite(mse) & np.isfinite(variance)  # channels that were scored at all
        channels = {
            name: {
                "rmse": float(rmse[c] * scale[c]),
                "rmse_sqrt_before_time_avg": float(rmse_before[c] * scale[c]),
                "mae": float(mae[c] * scale[c]),
                "bias": float(bias[c] * scale[c]),
                "acc": float(acc[c]),
                "acc_times": int(s["acc_n"][c]),  # the times with an ACC: a climatology, and anomalies to correlate
                "r2": float(1 - mse[c] / variance[c]) if variance[c] > 0 else float("nan"),
                "units": units[c],
            }
            for c, name in enumerate(names)
        }
        overall = {
            "rmse": float(np.nanmean(rmse)),
            "rmse_sqrt_before_time_avg": float(np.nanmean(rmse_before)),
            "mae": float(np.nanmean(mae)),
            "r2": float(1 - mse[both].sum() / variance[both].sum()) if both.any() else float("nan"),
            "acc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "units": "train std",
        }
        return {"loss": float(np.nanmean(mse)), "samples": self.samples, "overall": overall, "channels": channels}
