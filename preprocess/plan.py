"""The build's `Plan`: the store's channels and train statistics, decided from pass 1 by the recipe's NaN policy.

Channels with a NaN layout that varies over time get a `<name>_valid` channel (1 observed, 0 filled);
NaNs in a fixed layout are recorded once, in the static `mask`. A channel without a valid train value, with
a non-finite statistic or with std 0 is refused by name: no store is published that cannot be normalised.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from canonstore.errors import SourceError
from canonstore.formats.spec import STAT_NAMES, masked_channel, valid_name
from canonstore.preprocess.recipe import Recipe
from canonstore.preprocess.scan import NanFacts, ScanResult
from canonstore.preprocess.sources import Channel, Sources
from canonstore.splits import SPLIT_CODES


@dataclass(frozen=True, eq=False)
class Plan:
    """What the write pass writes: the store's `channels` (the sources', then one `_valid` channel for each of
    `mask_channels`, the source channels it masks), their train `stats` (name -> float64 per channel), and
    `static_mask`, True where a source channel's value is observed (None: no fixed NaN layout)."""

    channels: tuple[Channel, ...]
    stats: dict[str, np.ndarray]
    mask_channels: tuple[int, ...]
    static_mask: np.ndarray | None = None

    @classmethod
    def decide(cls, recipe: Recipe, sources: Sources, scanned: ScanResult, labels: np.ndarray) -> Plan:
        """Apply the NaN policy and decide the channel list (with mask channels) and its statistics."""
        nans = scanned.nans
        has_nan = nans.count > 0
        if has_nan.any() and recipe.nan_policy == "error":
            listing = "; ".join(_nans_of(sources, nans, i) for i in np.flatnonzero(has_nan))
            raise SourceError(
                f"missing values found (recipe nan_policy: error): {listing}. Set `nan_policy: fill` "
                "to fill them with the train mean and keep a validity mask"
            )
        values = scanned.stats.as_dict()
        _check_stats(sources, values, labels)
        channels = list(sources.channels)
        mask_channels = [int(i) for i in np.flatnonzero(has_nan) if nans.varies[i]]
        for i in mask_channels:
            ch = channels[i]
            channels.append(Channel(valid_name(ch.name), ch.variable, ch.level, "1"))
            mask_stats = _mask_stats(scanned.stats.count[i], scanned.stats.nan_count[i])
            for k in STAT_NAMES:
                values[k] = np.append(values[k], mask_stats[k])
        static_mask = None
        if has_nan.any() and len(mask_channels) < has_nan.sum():
            static_mask = ~nans.pattern
            static_mask[mask_channels] = True  # those channels carry their mask as a data channel
        return cls(tuple(channels), values, tuple(mask_channels), static_mask)

    @classmethod
    def of_store(cls, store, sources: Sources) -> Plan:
        """The plan a store was built with (its channels, statistics and mask layout), bit for bit."""
        labels = store._group["data"].attrs["labels"]
        channels = [
            Channel(n, v, lev, u)
            for n, v, lev, u in zip(
                labels["channel"], labels["channel_variable"], labels["channel_level"], labels["channel_units"]
            )
        ]
        names = [c.name for c in sources.channels]
        mask_channels = [names.index(masked_channel(c.name)) for c in channels[len(names) :]]
        mask = store.mask
        return cls(
            channels=tuple(channels),
            stats={k: np.asarray(v) for k, v in store.stats.items()},
            mask_channels=tuple(mask_channels),
            static_mask=None if mask is None else mask[: len(names)],
        )

    def to_json(self) -> dict:
        """What a resumed build needs; Python's float repr round-trips float64, so it normalises identically."""
        return {
            "channels": [dataclasses.asdict(c) for c in self.channels],
            "stats": {k: np.asarray(v).tolist() for k, v in self.stats.items()},
            "mask_channels": [int(i) for i in self.mask_channels],
        }

    @classmethod
    def from_json(cls, state: dict) -> Plan:
        """The plan `to_json` wrote; its static mask is in the staging store already."""
        return cls(
            channels=tuple(Channel(**c) for c in state["channels"]),
            stats={k: np.asarray(v, dtype=np.float64) for k, v in state["stats"].items()},
            mask_channels=tuple(state["mask_channels"]),
        )

    def for_tasks(self) -> Plan:
        """Without the static mask (the only large part), to go with each write task."""
        return dataclasses.replace(self, static_mask=None)

    def padded_mask(self) -> np.ndarray:
        """The static mask of every store channel: the `_valid` channels are always observed."""
        extra = len(self.channels) - self.static_mask.shape[0]
        mask = self.static_mask
        return np.concatenate([mask, np.ones((extra,) + mask.shape[1:], bool)]) if extra else mask


def _nans_of(sources: Sources, nans: NanFacts, i: int) -> str:
    ch = sources.channels[i]
    return (
        f"{sources.file_of(ch.variable, nans.first_step[i])}: variable '{ch.variable}' (channel {ch.name}) "
        f"has {nans.count[i]} NaN or fill values, first at {sources.time_label(nans.first_step[i])}"
    )


def _check_stats(sources: Sources, values: dict, labels: np.ndarray) -> None:
    """Refuse a channel the train statistics cannot normalise, naming its file and variable."""
    first_train = int(np.argmax(labels == SPLIT_CODES["train"]))
    for i, ch in enumerate(sources.channels):
        where = f"{sources.file_of(ch.variable, first_train)}: variable '{ch.variable}' (channel {ch.name})"
        if values["count"][i] == 0:
            raise SourceError(
                f"{where} has no valid value in the {int((labels == SPLIT_CODES['train']).sum())} train steps; "
                "it cannot be normalised"
            )
        bad = [k for k in ("mean", "std", "min", "max", "sum", "sum_sq") if not np.isfinite(values[k][i])]
        if bad:  # e.g. values so large that their squares overflow float64
            raise SourceError(
                f"{where}: train statistics {', '.join(f'{k}={values[k][i]}' for k in bad)} are not "
                "finite; no store is published with a non-finite statistic"
            )
        if values["std"][i] == 0:
            raise SourceError(
                f"{where} is constant "
                f"({values['mean'][i]:g}) over the train split; std 0 cannot be normalised. "
                "Drop it from 'variables' or store it as 'static'"
            )


def _mask_stats(n_valid: int, n_nan: int) -> dict:
    """Train statistics of a `_valid` channel: 1 for each of `n_valid` values, 0 for each of `n_nan`."""
    p = n_valid / (n_valid + n_nan)
    return {
        "mean": p,
        "std": np.sqrt(p * (1 - p)),
        "min": 0.0 if n_nan else 1.0,
        "max": 1.0 if n_valid else 0.0,
        "count": n_valid + n_nan,
        "nan_count": 0,
        "sum": float(n_valid),
        "sum_sq": float(n_valid),
    }
