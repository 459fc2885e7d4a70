"""Which store steps and channels make each sample of a split: index arithmetic only (no torch, no reads).

    windows = Windows.of(store, "val", lead=[1, 2], history=1, channels=["z500", "t2m"])
    windows.input_channels           # ['z500@t-1', 't2m@t-1', 'z500', 't2m', 'lsm', 'orography']
    steps_in, steps_out = windows.steps([0, 5])   # the store steps samples 0 and 5 read

Sample `i` is a forecast pair: inputs at time t = `times[i]` and the `history` steps before it (stacked
along channels, oldest first, static fields and encodings appended), and the targets at t + `lead` (or
at each of several leads, stacked along channels, nearest first). Only times whose whole window,
farthest lead included, lies inside the split and spans no gap are samples. `loaders.dataset` reads
the values; the training config checks its keys with `as_leads` and `ENCODINGS` without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from canonstore.errors import StoreError
from canonstore.formats.spec import mask_channel_of
from canonstore.splits import SPLIT_CODES, segment_ids

# The channels each positional or temporal encoding adds (computed by `loaders.encodings`).
ENCODINGS = {
    "latlon": ("sin_lat", "cos_lat", "sin_lon", "cos_lon"),
    "doy": ("cos_doy", "sin_doy"),
    "hod": ("cos_hod", "sin_hod"),
    "toa": ("toa",),
}


def encoding_names(kinds) -> list[str]:
    """The channel names the encodings `kinds` add, in order."""
    unknown = [k for k in kinds if k not in ENCODINGS]
    if unknown:
        raise ValueError(f"unknown encoding(s) {unknown}; choose from {list(ENCODINGS)}")
    return [name for k in kinds for name in ENCODINGS[k]]


def sample_times(labels: np.ndarray, split: str, history: int, lead: int, gaps=()) -> np.ndarray:
    """Times t whose window [t - history, t + lead] is labelled `split` throughout and spans no time
    gap (`gaps`: steps after which the axis jumps, `Store.gaps`), ascending."""
    if history < 0 or lead < 0:
        raise ValueError(f"history and lead must be >= 0, got history={history}, lead={lead}")
    inside = labels == SPLIT_CODES[split]
    # A window is valid when every step in it is inside: a sliding minimum via cumulative sums.
    width = history + lead + 1
    counts = np.concatenate([[0], np.cumsum(inside)])
    starts = np.flatnonzero(counts[width:] - counts[:-width] == width) if inside.size >= width else np.array([], int)
    # ... and when its first and last steps lie in the same run of consecutive steps.
    segment = segment_ids(labels.size, gaps)
    starts = starts[segment[starts] == segment[starts + width - 1]]
    return starts + history


def as_leads(lead) -> tuple[int, ...]:
    """`lead` (one step count, or several) as a tuple of distinct ascending step counts >= 0."""
    leads = (lead,) if isinstance(lead, (int, np.integer)) else tuple(lead)
    if (
        not leads
        or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0 for k in leads)
        or list(leads) != sorted(set(leads))
    ):
        raise ValueError(f"lead must be a step count >= 0 or a list of distinct ascending ones, got {lead!r}")
    return tuple(int(k) for k in leads)


def select_channels(names: Sequence[str] | None, available: list[str], what: str) -> np.ndarray:
    """Positions of `names` in `available` (all of them when None), with a clear error for unknown names."""
    if names is None:
        return np.arange(len(available))
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; the store has {available}")
    return np.array([available.index(n) for n in names], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Windows:
    """The forecast windows of one split: which steps and channels each sample's x and y hold."""

    times: np.ndarray  # the input step t of each sample, ascending
    history: int
    leads: tuple[int, ...]
    store_channels: list[str]
    channels: np.ndarray  # x's dynamic channels: positions in store_channels
    targets: np.ndarray  # y's target channels
    masked_targets: list[str]  # targets whose `_valid` channel y carries after the targets
    y_channels: np.ndarray  # y's channels at each lead: the targets, then those `_valid` channels
    static_names: list[str]
    encoding_names: list[str]

    @classmethod
    def of(
        cls,
        store,
        split: str,
        lead: int | Sequence[int] = 1,
        history: int = 0,
        channels: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
        static: bool | Sequence[str] = True,
        target_masks: bool = False,
        encodings: Sequence[str] = (),
    ) -> Windows:
        """The windows of `split` of `store` (a Store): see `StoreDataset` for the arguments."""
        leads = as_leads(lead)
        times = sample_times(store.splits, split, history, leads[-1], store.gaps)
        if times.size == 0:
            raise StoreError(
                f"{store.path}: split '{split}' has no window of history={history} and "
                f"lead={leads[-1]} inside it ({int((store.splits == SPLIT_CODES[split]).sum())} steps)"
            )
        names = store.channels
        inputs = select_channels(channels, names, "channel(s)")
        masks = mask_channel_of(names)
        if targets is None:  # `<channel>_valid` are inputs only, unless named as targets
            targets = [names[c] for c in inputs if names[c] not in set(masks.values())]
        outputs = select_channels(targets, names, "target channel(s)")
        # With target_masks, y carries after the targets the `_valid` channel (at t + lead) of each target
        # that has one, so that filled points can weigh 0. With several leads, y repeats them per lead.
        masked = [names[c] for c in outputs if names[c] in masks] if target_masks else []
        valid = np.asarray([names.index(masks[n]) for n in masked], dtype=np.int64)
        statics = list(store.static) if static is True else ([] if static is False else list(static))
        unknown = [n for n in statics if n not in store.static]
        if unknown:
            raise ValueError(f"unknown static field(s) {unknown}; the store has {list(store.static)}")
        y_channels = np.concatenate([outputs, valid])
        return cls(
            times, history, leads, names, inputs, outputs, masked, y_channels, statics, encoding_names(encodings)
        )

    # -- channel names -------------------------------------------------------------------
    @property
    def input_channels(self) -> list[str]:
        """Names of x's channels in order: `<channel>@t-<k>` for history steps, then static, then encodings."""
        names = []
        for k in range(self.history, -1, -1):
            suffix = f"@t-{k}" if k else ""
            names += [self.store_channels[c] + suffix for c in self.channels]
        return names + self.static_names + self.encoding_names

    @property
    def target_channels(self) -> list[str]:
        """Names of the target channels at one lead (y repeats them per lead, see `leads`)."""
        return [self.store_channels[c] for c in self.targets]

    @property
    def lead_channels(self) -> list[str]:
        """Names of y's target channels over all leads: `<channel>` for one lead, `<channel>@t+<lead>` for several."""
        if len(self.leads) == 1:
            return self.target_channels
        return [f"{name}@t+{lead}" for lead in self.leads for name in self.target_channels]

    # -- rows of the store's data --------------------------------------------------------
    def batch_shapes(
        self, batch: int, space: tuple[int, ...], static: bool = True
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of a batch's (x, y) without encodings; x ends with the static fields if `static`."""
        x_channels = (self.history + 1) * self.channels.size + (len(self.static_names) if static else 0)
        return (batch, x_channels) + space, (batch, len(self.leads) * self.y_channels.size) + space

    def steps(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(input steps (n, history + 1), oldest first; target steps (n, leads)) of samples `positions`."""
        t = self.times[np.asarray(positions, dtype=np.int64)]
        return t[:, None] + np.arange(-self.history, 1)[None, :], t[:, None] + np.asarray(self.leads)[None, :]

    @cached_property  # asked twice a batch (5 us each), and fixed with the windows
    def whole_steps(self) -> bool:
        """Whether x's dynamic channels and y's are each all of the store's, in order: a row is then a step."""
        n = len(self.store_channels)
        return np.array_equal(self.channels, np.arange(n)) and np.array_equal(self.y_channels, self.channels)

    def rows(self, steps_in: np.ndarray, steps_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(x's rows per sample (n, k), y's rows (m,), rows per step) of the store's data seen as rows:
        whole steps (`whole_steps`), else one (step, channel) field each, in the order x and y stack them."""
        if self.whole_steps:
            return steps_in, steps_out.ravel(), 1
        n = len(self.store_channels)
        rows_in = (steps_in[:, :, None] * n + self.channels[None, None, :]).reshape(steps_in.shape[0], -1)
        rows_out = (steps_out[:, :, None] * n + self.y_channels[None, None, :]).ravel()
        return rows_in, rows_out, n
