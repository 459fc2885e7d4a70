"""Per-channel statistics in float64: per-step moments, merged step by step in time order.

Each (step, channel) field is reduced on its own (`step_moments`), then steps are merged one by
one with Chan et al.'s pairwise update (mean and M2), which stays accurate where the textbook
sum-of-squares formula cancels (geopotential ~ 5e4 m2/s2). The result depends on the steps alone,
never on how they were cut into blocks, shards or distributed tasks: a build on 16 workers that
merges the tasks' per-step moments in time order gets the same bits as one process. Sums and sums
of squares are kept too, so that stores can be merged and checked by others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MOMENTS = ("count", "sum", "sum_sq", "m2", "min", "max")  # per (step, channel), float64
ROWS_PER_CHUNK_BYTES = 1 << 20  # float64 working set per chunk of fields: stays in the CPU cache


def step_moments(block: np.ndarray, extremes: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(6, steps, channel) float64 moments (`MOMENTS`) of each field of a (steps, channel, *space) block.

    NaNs are left out (count says how many values were used). A field is converted to float64 once,
    in cache-sized chunks, so a float32 block costs a few passes at memory speed and no float64 copy.
    `extremes`: the (steps, channel) min and max of each field (NaN where it has a NaN) when the caller
    already took them (the build's NaN checks do), so that they are not taken twice.
    """
    n, c = block.shape[:2]
    rows = block.reshape(n * c, -1)
    size = rows.shape[1]
    out = np.empty((len(MOMENTS), n * c))
    lo, hi = extremes if extremes is not None else (rows.min(axis=1), rows.max(axis=1))
    out[4], out[5] = np.reshape(lo, -1), np.reshape(hi, -1)  # NaN in a row makes its min NaN: slow path below
    clean = ~np.isnan(out[4])
    step = max(1, ROWS_PER_CHUNK_BYTES // (8 * size))
    buf, sq = np.empty((step, size)), np.empty((step, size))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow gives inf, refused by name afterwards
        for r in range(0, n * c, step):
            d, s = buf[: min(step, n * c - r)], sq[: min(step, n * c - r)]
            d[...] = rows[r : r + len(d)]
            total = d.sum(axis=1)
            np.square(d, out=s)
            out[2, r : r + len(d)] = s.sum(axis=1)
            d -= (total / size)[:, None]
            np.square(d, out=s)
            out[1, r : r + len(d)], out[3, r : r + len(d)] = total, s.sum(axis=1)
        out[0] = size
        for r in np.flatnonzero(~clean):  # fields with NaNs (masked seas, gaps): NaN-aware, field by field
            x = rows[r].astype(np.float64)
            valid = ~np.isnan(x)
            count = int(valid.sum())
            x = x[valid]
            total = x.sum()
            out[:, r] = (
                count,
                total,
                np.square(x).sum(),
                np.square(x - total / max(count, 1)).sum(),
                x.min() if count else np.inf,
                x.max() if count else -np.inf,
            )
    return out.reshape(len(MOMENTS), n, c)


@dataclass
class RunningStats:
    """Streaming per-channel stats over steps, merged in the order they are given."""

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
        """Add a (steps, channel, *space) block of `channels` (default all); NaNs are counted, not used."""
        self.merge(step_moments(block), int(np.prod(block.shape[2:])), channels)

    def merge(self, moments: np.ndarray, size: int, channels=None) -> None:
        """Add (6, steps, channel) `step_moments` of fields of `size` values, step by step in order."""
        c = np.arange(self.channels) if channels is None else np.asarray(channels)
        with np.errstate(over="ignore", invalid="ignore"):
            for n, total, total_sq, m2, lo, hi in moments.transpose(1, 0, 2):  # Chan et al., one step at a time
                self.nan_count[c] += (size - n).astype(np.int64)
                new = self.count[c] + n
                step_mean = total / np.maximum(n, 1)
                delta = step_mean - self.mean[c]
                share = np.where(new > 0, n / np.maximum(new, 1), 0.0)
                self.m2[c] += m2 + delta**2 * self.count[c] * share
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
            "mean": np.where(empty, np.nan, self.mean),
            "std": self.std,
            "min": np.where(empty, np.nan, self.min),
            "max": np.where(empty, np.nan, self.max),
            "count": self.count.copy(),
            "nan_count": self.nan_count.copy(),
            "sum": self.sum.copy(),
            "sum_sq": self.sum_sq.copy(),
        }
