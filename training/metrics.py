"""Forecast scores in physical units: MAE, RMSE and R² per channel and overall, area-weighted.

Errors are summed in normalised units, in float64, and scaled back by each channel's train std:
de-normalising is `x * std + mean`, so the mean cancels in any error and `error * std` is the error
in the channel's own units. R² is 1 - MSE / variance of the target over the scored set (space and
time), so it needs no units. "overall" averages channels in normalised units (each channel counts
the same whatever its units): MAE and RMSE there are in train standard deviations.
"""

from __future__ import annotations

import numpy as np
import torch


def area_weights(store, targets: np.ndarray, lat_weighted: bool = True) -> torch.Tensor:
    """(target channel, *space) float32 weights with mean 1 per channel: cos(latitude) on a lat/lon
    grid, 0 where the store's mask says a value was filled rather than observed."""
    space = store.shape[2:]
    weights = np.ones((len(targets),) + space)
    if lat_weighted and "latitude" in store.dims[2:]:
        axis = store.dims[2:].index("latitude")
        lat = store.to_xarray()["latitude"].values
        shape = [1] * len(space)
        shape[axis] = -1
        weights = weights * np.clip(np.cos(np.deg2rad(lat)), 0, None).reshape(shape)
    if store.mask is not None:
        weights = weights * store.mask[targets]
    means = weights.reshape(len(targets), -1).mean(axis=1)
    means[means == 0] = 1  # a channel filled everywhere scores nothing rather than dividing by 0
    return torch.from_numpy((weights / means.reshape((-1,) + (1,) * len(space))).astype(np.float32))


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The training loss: area-weighted mean squared error in normalised units (float32)."""
    return ((prediction.float() - target.float()) ** 2 * weights).mean()


class Scores:
    """Running weighted error sums per channel over batches of (prediction, target), normalised units."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights.double()
        channels = weights.shape[0]
        self.sums = torch.zeros((5, channels), dtype=torch.float64, device=weights.device)
        self.samples = 0

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        target = target.double()
        error = prediction.double() - target
        dims = [0] + list(range(2, target.ndim))  # everything but the channel
        w = self.weights
        self.sums += torch.stack([
            (w * torch.ones_like(target)).sum(dims),
            (w * error.abs()).sum(dims),
            (w * error ** 2).sum(dims),
            (w * target).sum(dims),
            (w * target ** 2).sum(dims),
        ])
        self.samples += target.shape[0]

    def all_reduce(self) -> None:
        """Sum over the processes of a distributed run (each scored its own samples)."""
        import torch.distributed as dist

        samples = torch.tensor([self.samples], dtype=torch.float64, device=self.sums.device)
        dist.all_reduce(self.sums)
        dist.all_reduce(samples)
        self.samples = int(samples.item())

    def result(self, names: list[str], scale: np.ndarray, units: list[str]) -> dict:
        """{"loss", "samples", "overall": {mae, rmse, r2}, "channels": {name: {mae, rmse, r2, units}}}.

        `scale`: each channel's normalisation divisor (its train std), to turn errors into its `units`.
        """
        weight, abs_err, sq_err, total, total_sq = self.sums.cpu().numpy()
        weight = np.where(weight > 0, weight, np.nan)
        mae, mse = abs_err / weight, sq_err / weight
        variance = total_sq / weight - (total / weight) ** 2
        channels = {name: {"mae": float(mae[c] * scale[c]), "rmse": float(np.sqrt(mse[c]) * scale[c]),
                           "r2": float(1 - mse[c] / variance[c]) if variance[c] > 0 else float("nan"),
                           "units": units[c]}
                    for c, name in enumerate(names)}
        overall = {"mae": float(np.nanmean(mae)), "rmse": float(np.sqrt(np.nanmean(mse))),
                   "r2": float(1 - np.nansum(mse) / np.nansum(variance)), "units": "train std"}
        return {"loss": float(np.nanmean(mse)), "samples": self.samples, "overall": overall, "channels": channels}
