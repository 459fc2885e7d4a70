"""The store's conventions (FORMAT.md) as code, in one place: the writer and every reader import them.

Format version, the statistics stored per channel, the name of a channel's validity mask, and the
normalisation: stored = (physical - mean) / scale per channel, scale = std or 1 for a constant channel.
"""

from __future__ import annotations

import numpy as np

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 is version 2 with one shard: read, never appended to
STAT_NAMES = ("mean", "std", "min", "max", "count", "nan_count", "sum", "sum_sq")  # stats_<name> arrays

_VALID = "_valid"  # `<channel>_valid`: 1 where the channel was observed, 0 where its NaN was filled


def valid_name(channel: str) -> str:
    """The name of `channel`'s validity-mask channel: 'sst' -> 'sst_valid'."""
    return channel + _VALID


def masked_channel(name: str) -> str | None:
    """The channel whose validity mask `name` is ('sst_valid' -> 'sst'), or None if `name` is no mask's name."""
    return name.removesuffix(_VALID) if name.endswith(_VALID) else None


def mask_channel_of(channels: list[str]) -> dict[str, str]:
    """{channel: its `<channel>_valid` mask channel} for the channels of `channels` whose NaNs were filled."""
    return {masked_channel(name): name for name in channels if masked_channel(name) in channels}


def normalisation_scale(std: np.ndarray) -> np.ndarray:
    """The divisor of the normalisation (FORMAT.md): std, or 1 for a constant channel (never divide by 0)."""
    return np.where(np.isfinite(std) & (std > 0), std, 1.0)


def normalise(
    values: np.ndarray, mean: np.ndarray, std: np.ndarray, channel_axis: int = 1, inplace: bool = False
) -> np.ndarray:
    """Physical values -> stored values (FORMAT.md): (x - mean) / scale per channel, NaN -> 0, float64.

    `inplace=True` overwrites `values` (float64) instead of allocating: the same bits, less memory.
    """
    shape = [1] * np.ndim(values)
    shape[channel_axis] = -1
    out = values if inplace else None
    normalised = np.subtract(values, np.reshape(mean, shape), out=out)
    np.divide(normalised, normalisation_scale(np.asarray(std)).reshape(shape), out=normalised)
    return np.nan_to_num(normalised, copy=False, nan=0.0)  # NaNs only remain where nan_policy is fill


def normalise_to(
    values: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    dtype,
    out: np.ndarray | None = None,
    chunk_bytes: int = 1 << 20,
) -> np.ndarray:
    """`normalise(values).astype(dtype)` for a (steps, channel, *space) block, bit for bit, in cache-sized
    float64 chunks: no float64 copy of the block, a few passes at memory speed. `out` may be `values`."""
    n, c = values.shape[:2]
    rows = values.reshape(n * c, -1)
    out = np.empty(values.shape, dtype) if out is None else out
    target = out.reshape(n * c, -1)
    mean_rows = np.tile(np.asarray(mean, np.float64), n)
    scale_rows = np.tile(normalisation_scale(np.asarray(std, np.float64)), n)
    step = max(1, chunk_bytes // (8 * rows.shape[1]))
    buf = np.empty((step, rows.shape[1]))
    for r in range(0, n * c, step):
        d = buf[: min(step, n * c - r)]
        d[...] = rows[r : r + len(d)]
        d -= mean_rows[r : r + len(d), None]
        d /= scale_rows[r : r + len(d), None]
        if not np.isfinite(d).all():
            np.nan_to_num(d, copy=False, nan=0.0)
        with np.errstate(over="ignore"):  # float16 overflow becomes inf, which the build refuses by name
            target[r : r + len(d)] = d
    return out


def denormalise(values: np.ndarray, mean: np.ndarray, std: np.ndarray, channel_axis: int = 1) -> np.ndarray:
    """Stored values -> physical units: values * scale + mean, channels along `channel_axis`."""
    shape = [1] * np.ndim(values)
    shape[channel_axis] = -1
    return values * normalisation_scale(std).reshape(shape) + np.reshape(mean, shape)
