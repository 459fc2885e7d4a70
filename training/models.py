"""Forecast models on (batch, channel, lat, lon) fields.

The UNet pads like a sphere: circular along longitude (the dateline is not an edge) and replicate
along latitude (there is nothing beyond a pole to wrap to).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def sphere_pad(x: torch.Tensor, lat: int, lon: int) -> torch.Tensor:
    """Pad `lat` rows (replicate) and `lon` columns (circular) on each side."""
    if lon:
        x = F.pad(x, (lon, lon, 0, 0), mode="circular")
    if lat:
        x = F.pad(x, (0, 0, lat, lat), mode="replicate")
    return x


class SphereConv(nn.Module):
    """3x3 convolution with sphere padding, normalisation and GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=0, bias=False)
        self.norm = nn.GroupNorm(min(8, c_out), c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(sphere_pad(x, 1, 1))))


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(SphereConv(c_in, c_out), SphereConv(c_out, c_out))


class UNet(nn.Module):
    """A small UNet: `depth` halvings, `width` channels at full resolution (doubling per level).

    Grids whose sides are not multiples of 2**depth are sphere-padded up to one and cropped back.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, depth: int = 3):
        super().__init__()
        widths = [width * 2 ** k for k in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([_block(in_channels, widths[0])] +
                                  [_block(widths[k], widths[k + 1]) for k in range(depth)])
        self.up = nn.ModuleList([_block(widths[k + 1] + widths[k], widths[k]) for k in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_lat, n_lon = x.shape[-2:]
        m = 2 ** self.depth
        pad_lat, pad_lon = (-n_lat) % m, (-n_lon) % m
        if pad_lat or pad_lon:
            x = F.pad(F.pad(x, (0, pad_lon, 0, 0), mode="circular"), (0, 0, 0, pad_lat), mode="replicate")
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)[..., :n_lat, :n_lon]
