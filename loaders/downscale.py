"""Downscaling inputs: coarsen high-resolution fields to a coarse grid and interpolate them back.

    y_CU = coarse_up(y_HR, factor)        # the model learns R = y_HR - y_CU (IPSL-AID's set-up)

Coarsening is the plain mean over the `factor` fine cells of each coarse cell; interpolation back is bilinear
between coarse cell centres. On a global grid (`periodic`: the store's `longitude_periodic`) longitude,
the last dimension, wraps: the cells east of the last column are the first ones, so nothing changes at
the dateline. On a regional grid its edge columns are repeated instead, as latitude's edge rows always
are (nothing lies beyond a pole, or beyond a region's edge). Runs on whatever device the batch is on.
With random patches, `coarse_up_patches` computes a patch's coarse-up from the patch and the coarse cells
around it only: the same numbers as cutting the patch from the whole field's coarse-up, at a fraction of the cost.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from canonstore.loaders.patches import crop


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
        raise ValueError(
            f"coarse grid {list(shape)} (factor {list(factor)}) does not divide the grid {list(space)}: "
            "choose a coarse grid whose sides divide it"
        )
    return factor


def coarsen(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    """(batch, channel, lat, lon) -> (batch, channel, lat / f_lat, lon / f_lon): coarse-cell means."""
    return F.avg_pool2d(x, kernel_size=factor, stride=factor)


def upsample(coarse: torch.Tensor, factor: tuple[int, int], *, periodic: bool) -> torch.Tensor:
    """Bilinear back to the fine grid, clamped in latitude, and in longitude periodic or clamped."""
    fy, fx = factor
    wide = _linear(F.pad(coarse, (1, 1, 0, 0), mode="circular" if periodic else "replicate"), -1, fx)
    return _linear(F.pad(wide, (0, 0, 1, 1), mode="replicate"), -2, fy)


def coarse_up(x: torch.Tensor, factor: tuple[int, int], *, periodic: bool) -> torch.Tensor:
    """`upsample(coarsen(x))`: what the fine grid looks like when only the coarse one is known.
    `periodic`: whether longitude wraps (a global grid, the store's `longitude_periodic`)."""
    work = x if x.dtype == torch.float64 else x.float()  # float16/bfloat16 batches are averaged in float32
    return upsample(coarsen(work, factor), factor, periodic=periodic).to(x.dtype)


def coarse_up_patches(
    x: torch.Tensor,
    factor: tuple[int, int],
    rows: torch.Tensor,
    cols: torch.Tensor,
    samples: torch.Tensor | None = None,
    *,
    periodic: bool,
) -> torch.Tensor:
    """`crop(coarse_up(x, factor), rows, cols, samples)`, bit for bit, from the coarse cells the patches read.

    rows (n, h) and cols (n, w) are patches of consecutive cells as `patches.patch_indices` draws them (the
    columns may wrap around a periodic grid). Each patch's window of coarse cells (those it lies in and one
    more on each side, wrapped or repeated beyond the grid as `upsample` pads it) is coarsened and
    interpolated as `upsample` does the whole grid, then the patch is cut from it.
    """
    (fy, fx), (n_lat, n_lon) = factor, x.shape[-2:]
    rows, cols = rows.cpu(), cols.cpu()  # indices are worked out on the CPU, the values stay where they are
    top, row_cells = _window(rows[:, 0], rows.shape[1], fy, lambda k: k.clamp(0, n_lat // fy - 1))
    left, col_cells = _window(
        cols[:, 0], cols.shape[1], fx, lambda k: k % (n_lon // fx) if periodic else k.clamp(0, n_lon // fx - 1)
    )
    fine_rows = (row_cells[:, :, None] * fy + torch.arange(fy)).flatten(1)
    fine_cols = (col_cells[:, :, None] * fx + torch.arange(fx)).flatten(1)
    window = crop(x, fine_rows, fine_cols, samples)
    window = window if window.dtype == torch.float64 else window.float()  # as `coarse_up`
    fine = _linear(_linear(coarsen(window, factor), -1, fx), -2, fy)

    def at(start, size):
        return start[:, None] + torch.arange(size)

    return crop(fine, at(top, rows.shape[1]), at(left, cols.shape[1])).to(x.dtype)


def _window(start: torch.Tensor, size: int, f: int, cell) -> tuple[torch.Tensor, torch.Tensor]:
    """For patches of `size` consecutive fine cells from `start` (n,): where each begins in its window's
    interpolated cells (n,), and the window's coarse cells (n, m): those the patch lies in, with one more on
    each side; `cell` maps a coarse index (-1 ... n, or more for a patch that wraps) to the grid's cell."""
    first = torch.div(start, f, rounding_mode="floor")
    window = first[:, None] - 1 + torch.arange((size + f - 2) // f + 3)  # the most cells a patch can lie in, + 2
    return start - first * f, cell(window)


def _linear(padded: torch.Tensor, dim: int, f: int) -> torch.Tensor:
    """Linear interpolation along `dim` (-1 or -2) between the centres of cells of `padded`, whose first and
    last are the padding: f fine cells for each other one, as `F.interpolate(mode="bilinear",
    align_corners=False)`. Fine cell r of cell q is a + (b - a) x w_r (a, b the cells around its centre),
    the same operations on the same numbers wherever the cell lies: a window of the grid interpolates to the
    same bits as the whole grid (F.interpolate's float32 weights depend on the position)."""
    n = padded.shape[dim] - 2
    step = padded.narrow(dim, 1, n + 1) - padded.narrow(dim, 0, n + 1)  # b - a between consecutive cells
    split = padded.ndim + dim + 1  # fine cells (q, r) side by side: the axis of r
    shape = list(padded.shape)
    shape[dim] = n
    out = padded.new_empty(shape[:split] + [f] + shape[split:])
    for r in range(f):
        twice = 2 * r + 1 - f  # 2f x (r's centre - its cell's centre), in coarse cells
        before = 0 if twice < 0 else 1  # the cell whose centre lies before r's: q - 1 or q, in `padded` q or q + 1
        weight = (twice + 2 * f * (1 - before)) / (2 * f)  # of the next cell, from whole numbers
        target = out.select(split, r)
        torch.mul(step.narrow(dim, before, n), weight, out=target)
        target.add_(padded.narrow(dim, before, n))
    return out.flatten(split - 1, split)


class CoarseUp:
    """A batch transform: the first `dynamic` input channels become their coarse-up (the model never
    sees them at high resolution); static fields and encodings after them stay as they are. Apply it to
    whole fields: random patches are cut from its result, so they hold what validation sees."""

    def __init__(self, factor: tuple[int, int], dynamic: int, *, periodic: bool):
        self.factor, self.dynamic, self.periodic = factor, dynamic, periodic

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = coarse_up(x[:, : self.dynamic], self.factor, periodic=self.periodic)
        return torch.cat([coarse, x[:, self.dynamic :]], dim=1), y

    def cut(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        samples: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The patches `patches.crop(*self(x, y), rows, cols, samples)` cuts, without a coarse-up of whole fields."""
        coarse = coarse_up_patches(x[:, : self.dynamic], self.factor, rows, cols, samples, periodic=self.periodic)
        rest = crop(x[:, self.dynamic :], rows, cols, samples)
        return torch.cat([coarse, rest], dim=1), crop(y, rows, cols, samples)
