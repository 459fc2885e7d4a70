"""The trained networks, on (batch, channel, *space) fields: a UNet padded like a sphere, and a per-point MLP.

- UNet: pads like a sphere on a global grid: circular along longitude (the dateline is not an edge)
  and replicate along latitude (there is nothing beyond a pole to wrap to); on a regional grid (the
  store's `longitude_periodic` false) replicate along both; `width` channels at full resolution.
- MLP: the same small network at every grid point (1x1), no spatial context; works on any space.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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


def _double_conv(c_in: int, c_out: int, periodic: bool) -> nn.Sequential:
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
            [_double_conv(in_channels, widths[0], periodic)]
            + [_double_conv(widths[k], widths[k + 1], periodic) for k in range(depth)]
        )
        self.up = nn.ModuleList(
            [_double_conv(widths[k + 1] + widths[k], widths[k], periodic) for k in reversed(range(depth))]
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
        for k, level in enumerate(self.down):
            x = level(x if k == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for level in self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = level(torch.cat([x, skips.pop()], dim=1))
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
