"""Downscaling inputs: coarsen high-resolution fields to a coarse grid and interpolate them back.

    y_CU = coarse_up(y_HR, factor)        # the model learns R = y_HR - y_CU (IPSL-AID's set-up)

Coarsening is the plain mean over each block of `factor` cells; interpolation back is bilinear
between coarse cell centres. On a global grid (`periodic`: the store's `longitude_periodic`) longitude,
the last dimension, wraps: the cells east of the last column are the first ones, so nothing changes at
the dateline. On a regional grid its edge columns are repeated instead, as latitude's edge rows always
are (nothing lies beyond a pole, or beyond a region's edge). Runs on whatever device the batch is on.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def coarse_factor(space: tuple[int, ...], coarse) -> tuple[int, int]:
    """(lat, lon) factor from `coarse`: a coarse grid [h, w] or one integer factor for both axes."""
    if len(space) != 2:
        raise ValueError(f"downscaling needs (lat, lon) samples; this store's samples are {space}")
    factor = (coarse, coarse) if isinstance(coarse, int) else (space[0] // coarse[0], space[1] // coarse[1])
    if isinstance(coarse, int):
        shape = (space[0] // coarse, space[1] // coarse)
    else:
        shape = tuple(coarse)
    if min(factor) < 1 or factor[0] * shape[0] != space[0] or factor[1] * shape[1] != space[1]:
        raise ValueError(f"coarse grid {list(shape)} (factor {list(factor)}) does not divide the grid {list(space)}: "
                         "choose a coarse grid whose sides divide it")
    return factor


def coarsen(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    """(batch, channel, lat, lon) -> (batch, channel, lat / f_lat, lon / f_lon): block means."""
    return F.avg_pool2d(x, kernel_size=factor, stride=factor)


def upsample(coarse: torch.Tensor, factor: tuple[int, int], *, periodic: bool) -> torch.Tensor:
    """Bilinear back to the fine grid, clamped in latitude, and in longitude periodic or clamped."""
    fy, fx = factor
    padded = F.pad(F.pad(coarse, (1, 1, 0, 0), mode="circular" if periodic else "replicate"), (0, 0, 1, 1),
                   mode="replicate")
    fine = F.interpolate(padded, scale_factor=(fy, fx), mode="bilinear", align_corners=False)
    return fine[..., fy:-fy, fx:-fx]


def coarse_up(x: torch.Tensor, factor: tuple[int, int], *, periodic: bool) -> torch.Tensor:
    """`upsample(coarsen(x))`: what the fine grid looks like when only the coarse one is known.
    `periodic`: whether longitude wraps (a global grid, the store's `longitude_periodic`)."""
    work = x if x.dtype == torch.float64 else x.float()  # float16/bfloat16 batches are averaged in float32
    return upsample(coarsen(work, factor), factor, periodic=periodic).to(x.dtype)


class CoarseUp:
    """A batch transform: the first `dynamic` input channels become their coarse-up (the model never
    sees them at high resolution); static fields and encodings after them stay as they are. Apply it to
    whole fields: random blocks are cut from its result, so they hold what validation sees."""

    def __init__(self, factor: tuple[int, int], dynamic: int, *, periodic: bool):
        self.factor, self.dynamic, self.periodic = factor, dynamic, periodic

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = coarse_up(x[:, :self.dynamic], self.factor, periodic=self.periodic)
        return torch.cat([coarse, x[:, self.dynamic:]], dim=1), y
