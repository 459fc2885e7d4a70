"""Per-channel statistics in float64, accumulated block by block.

Blocks are merged with Chan et al.'s pairwise update (mean and M2), which stays accurate
where the textbook sum-of-squares formula cancels (geopotential ~ 5e4 m2/s2). Sums and
sums of squares are kept too, so that stores can be merged and checked by others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from canonstore.formats.store import STAT_NAMES as FIELDS


@dataclass
class RunningStats:
    """Streaming per-channel stats over blocks shaped (steps, channel, *space)."""

    channels: int
    count: np.ndarray = field(init=False)
    nan_count: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    min: np.ndarray = field(init=False)
    max: np.ndarray = field(init=False)
    sum: np.ndarray = field(init=False)
    sum_sq: np.ndarray = field(init=False)

    def __post_init__(self):
        c = self.channels
        self.count, self.nan_count = np.zeros(c, np.int64), np.zeros(c, np.int64)
        self.mean, self.m2 = np.zeros(c), np.zeros(c)
        self.min, self.max = np.full(c, np.inf), np.full(c, -np.inf)
        self.sum, self.sum_sq = np.zeros(c), np.zeros(c)

    def update(self, block: np.ndarray, channels=None) -> None:
        """Add a float64 block (steps, channel, *space) of `channels` (default all); NaNs are counted, not used."""
        channels = range(self.channels) if channels is None else channels
        # Overflow gives inf, which the build refuses by name afterwards (no store has a non-finite stat).
        with np.errstate(over="ignore", invalid="ignore"):
            for i, c in enumerate(channels):  # one channel at a time keeps temporaries small
                self._update_channel(int(c), block[:, i].ravel())

    def _update_channel(self, c: int, x: np.ndarray) -> None:
        valid = x[~np.isnan(x)]
        n = valid.size
        self.nan_count[c] += x.size - n
        if n == 0:
            return
        block_mean = valid.mean()
        block_m2 = np.square(valid - block_mean).sum()
        total = self.count[c] + n
        delta = block_mean - self.mean[c]
        self.mean[c] += delta * n / total
        self.m2[c] += block_m2 + delta ** 2 * self.count[c] * n / total
        self.count[c] = total
        self.sum[c] += valid.sum()
        self.sum_sq[c] += np.square(valid).sum()
        self.min[c] = min(self.min[c], valid.min())
        self.max[c] = max(self.max[c], valid.max())

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0), NaN where a channel has no value."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, np.sqrt(self.m2 / self.count), np.nan)

    def as_dict(self) -> dict[str, np.ndarray]:
        empty = self.count == 0
        return {
            "mean": np.where(empty, np.nan, self.mean), "std": self.std,
            "min": np.where(empty, np.nan, self.min), "max": np.where(empty, np.nan, self.max),
            "count": self.count.copy(), "nan_count": self.nan_count.copy(),
            "sum": self.sum.copy(), "sum_sq": self.sum_sq.copy(),
        }

