"""Per-channel statistics in float64, accumulated block by block.

Blocks are merged with Chan et al.'s pairwise update (mean and M2), which stays accurate
where the textbook sum-of-squares formula cancels (geopotential ~ 5e4 m2/s2). Sums and
sums of squares are kept too, so that stores can be merged and checked by others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FIELDS = ("mean", "std", "min", "max", "count", "nan_count", "sum", "sum_sq")


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

    def update(self, block: np.ndarray) -> None:
        """Add a float64 block (steps, channel, *space); NaNs are counted, not used."""
        flat = np.moveaxis(block, 1, 0).reshape(self.channels, -1)
        valid = ~np.isnan(flat)
        n = valid.sum(axis=1)
        self.nan_count += flat.shape[1] - n
        has = n > 0
        if not has.any():
            return
        zeroed = np.where(valid, flat, 0.0)
        block_sum = zeroed.sum(axis=1)
        block_mean = np.divide(block_sum, n, out=np.zeros_like(block_sum), where=has)
        block_m2 = (np.where(valid, flat - block_mean[:, None], 0.0) ** 2).sum(axis=1)
        total = self.count + n
        delta = block_mean - self.mean
        safe = np.maximum(total, 1)
        self.mean = np.where(has, self.mean + delta * n / safe, self.mean)
        self.m2 = np.where(has, self.m2 + block_m2 + delta ** 2 * self.count * n / safe, self.m2)
        self.count = total
        self.sum += block_sum
        self.sum_sq += (zeroed ** 2).sum(axis=1)
        self.min = np.minimum(self.min, np.where(valid, flat, np.inf).min(axis=1))
        self.max = np.maximum(self.max, np.where(valid, flat, -np.inf).max(axis=1))

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


def normalisation_scale(std: np.ndarray) -> np.ndarray:
    """The divisor used for normalising: std, or 1 for a constant channel (never divide by 0)."""
    return np.where(np.isfinite(std) & (std > 0), std, 1.0)
