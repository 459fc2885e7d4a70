"""Random patches: crop the same (lat, lon) patch from inputs and targets at random centres.

On a global grid (`periodic`: the store's `longitude_periodic`) longitude, the last dimension, wraps,
so a patch may cross the dateline; latitude (the one before) never does, so a patch near a pole is
shifted to lie inside the globe, and so is a patch near a regional grid's east or west edge. This is
the IPSL-AID training strategy (the training config's `blocks` key); it runs on whatever device the batch
is on (the GPU after transfer). Patches are drawn per batch (one per sample), or per epoch (`s` patches,
every sample cut at all of them).
"""

from __future__ import annotations

import torch


def patch_indices(
    batch: int, grid: tuple[int, int], size: tuple[int, int], generator: torch.Generator, *, periodic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row (batch, size_lat) and column (batch, size_lon) indices of one random patch per sample; the
    columns wrap around when `periodic`, else the patch is shifted inside the grid (the same draws)."""
    (n_lat, n_lon), (p_lat, p_lon) = grid, size
    if not (0 < p_lat <= n_lat and 0 < p_lon <= n_lon):
        raise ValueError(f"patch size {size} does not fit the grid {grid} (lat, lon)")
    centre_lat = torch.randint(0, n_lat, (batch,), generator=generator)
    centre_lon = torch.randint(0, n_lon, (batch,), generator=generator)
    top = (centre_lat - p_lat // 2).clamp(0, n_lat - p_lat)  # clamped inside the globe
    rows = top[:, None] + torch.arange(p_lat)
    left = centre_lon - p_lon // 2
    cols = (left if periodic else left.clamp(0, n_lon - p_lon))[:, None] + torch.arange(p_lon)
    return rows, cols % n_lon  # wraps around a global grid; inside a regional one already


def crop(
    values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, samples: torch.Tensor | None = None
) -> torch.Tensor:
    """values (batch, channel, lat, lon) -> (n, channel, size_lat, size_lon): patch k is cut from sample
    `samples[k]` (default k) at rows[k] x cols[k], gathered straight from `values` (no repeated copies)."""
    b = torch.arange(values.shape[0]) if samples is None else samples
    b = b.to(values.device)[:, None, None]
    rows, cols = rows.to(values.device), cols.to(values.device)
    # Advanced indices around a slice put the indexed dims first: (batch, lat, lon, channel).
    return values[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def epoch_patches(
    batch: int, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every sample of a batch at each of the epoch's patches (rows (s, h), cols (s, w)): `crop`'s
    (samples, rows, cols) for batch x s patches, sample-major (sample 0's s patches first)."""
    s = rows.shape[0]
    return torch.arange(batch).repeat_interleave(s), rows.repeat(batch, 1), cols.repeat(batch, 1)


def random_patches(
    x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], generator: torch.Generator, *, periodic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop one random patch per sample, the same patch from `x` and `y`; draws come from `generator`.
    `periodic`: whether longitude wraps (a global grid, the store's `longitude_periodic`)."""
    if x.ndim != 4 or y.ndim != 4:
        raise ValueError(f"random patches need (batch, channel, lat, lon) tensors, got {tuple(x.shape)}")
    rows, cols = patch_indices(x.shape[0], tuple(x.shape[-2:]), tuple(size), generator, periodic=periodic)
    return crop(x, rows, cols), crop(y, rows, cols)
