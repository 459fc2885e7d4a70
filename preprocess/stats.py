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
        """Add a float64 block (steps, channel, *space) of `channels` (default all); NaNs are counted, not used.

        Each step's field is reduced on its own, then the steps are merged one by one in order: the
        result depends on the steps alone, never on how they were cut into blocks or shards (a
        distributed build merging per-step partials in the same order gets the same bits).
        """
        channels = np.arange(self.channels) if channels is None else np.asarray(channels)
        n = block.shape[0]
        count, total, total_sq, m2 = (np.zeros((n, channels.size)) for _ in range(4))
        lo, hi = np.full((n, channels.size), np.inf), np.full((n, channels.size), -np.inf)
        # Overflow gives inf, which the build refuses by name afterwards (no store has a non-finite stat).
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for i in range(channels.size):  # one channel at a time keeps temporaries small
                x = block[:, i].reshape(n, -1)
                valid = ~np.isnan(x)
                count[:, i] = valid.sum(axis=1)
                total[:, i] = np.where(valid, x, 0.0).sum(axis=1)
                total_sq[:, i] = np.where(valid, np.square(x), 0.0).sum(axis=1)
                mean = total[:, i] / np.maximum(count[:, i], 1)
                m2[:, i] = np.where(valid, np.square(x - mean[:, None]), 0.0).sum(axis=1)
                lo[:, i] = np.where(valid, x, np.inf).min(axis=1)
                hi[:, i] = np.where(valid, x, -np.inf).max(axis=1)
            size = int(np.prod(block.shape[2:]))
            for t in range(n):  # Chan et al.'s pairwise update, step by step
                self._merge(channels, count[t], total[t], total_sq[t], m2[t], lo[t], hi[t], size)

    def _merge(self, c, n, total, total_sq, m2, lo, hi, size) -> None:
        self.nan_count[c] += (size - n).astype(np.int64)
        new = self.count[c] + n
        step_mean = total / np.maximum(n, 1)
        delta = step_mean - self.mean[c]
        share = np.where(new > 0, n / np.maximum(new, 1), 0.0)
        self.m2[c] += m2 + delta ** 2 * self.count[c] * share
        self.mean[c] += delta * share
        self.count[c] = new.astype(np.int64)
        self.sum[c] += total
        self.sum_sq[c] += total_sq
        self.min[c] = np.minimum(self.min[c], lo)
        self.max[c] = np.maximum(self.max[c], hi)

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

