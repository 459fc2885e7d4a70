"""A memory-mapped PyTorch Dataset over one split of a store.

Sample `i` is a forecast pair: inputs at time t and the `history` steps before it (stacked along
channels, oldest first, static fields appended), and the targets at t + `lead` (or at each of several
leads, stacked along channels, nearest first). Only times whose whole window, farthest lead included,
lies inside the split and spans no gap are samples. Reads come straight from the store's memmap; the
only copy is into the output (a sample, or a whole batch with `gather`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from canonstore.errors import StoreError
from canonstore.formats import open_store
from canonstore.formats.manifest import store_identity
from canonstore.formats.shards import take_rows
from canonstore.formats.spec import mask_channel_of
from canonstore.loaders.encodings import Encodings
from canonstore.splits import SPLIT_CODES, check_split, segment_ids


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


def _select(names: Sequence[str] | None, available: list[str], what: str) -> np.ndarray:
    """Positions of `names` in `available` (all of them when None), with a clear error for unknown names."""
    if names is None:
        return np.arange(len(available))
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; the store has {available}")
    return np.array([available.index(n) for n in names], dtype=np.int64)


class WindowDataset(torch.utils.data.Dataset):
    """Forecast windows over one split; subclasses say how to read normalised steps (`_read_steps`)."""

    def __init__(
        self,
        store,
        split: str = "train",
        lead: int | Sequence[int] = 1,
        history: int = 0,
        channels: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
        static: bool | Sequence[str] = True,
        transform: Callable | None = None,
        target_masks: bool = False,
        encodings: Sequence[str] = (),
    ):
        store = open_store(store) if isinstance(store, (str, Path)) else store
        check_split(split)
        self.path, self.split, self.leads, self.history = store.path, split, as_leads(lead), history
        self.transform = transform
        self.store_identity = store.build_id  # which build the windows below belong to (the Store's own)
        self.times = sample_times(store.splits, split, history, self.leads[-1], store.gaps)
        if self.times.size == 0:
            raise StoreError(
                f"{store.path}: split '{split}' has no window of history={history} and "
                f"lead={self.leads[-1]} inside it ({int((store.splits == SPLIT_CODES[split]).sum())} steps)"
            )
        self.store_channels = store.channels
        self.channels = _select(channels, self.store_channels, "channel(s)")
        masks = mask_channel_of(self.store_channels)
        if targets is None:  # `<channel>_valid` are inputs only, unless named as targets
            mask_names = set(masks.values())
            targets = [self.store_channels[c] for c in self.channels if self.store_channels[c] not in mask_names]
        self.targets = _select(targets, self.store_channels, "target channel(s)")
        # With target_masks, y carries after the targets the `_valid` channel (at t + lead) of each target
        # that has one, so that filled points can weigh 0 (`masked_targets` names them). With several
        # leads, y is one such block per lead, nearest lead first.
        self.masked_targets = [n for n in self.target_channels if n in masks] if target_masks else []
        valid = [self.store_channels.index(masks[n]) for n in self.masked_targets]
        self.y_channels = np.concatenate([self.targets, np.asarray(valid, dtype=np.int64)])
        names = list(store.static) if static is True else ([] if static is False else list(static))
        unknown = [n for n in names if n not in store.static]
        if unknown:
            raise ValueError(f"unknown static field(s) {unknown}; the store has {list(store.static)}")
        self.static_names = names
        self.static = (
            np.stack([store.static[n] for n in names]).astype(np.float32)
            if names
            else np.zeros((0,) + store.shape[2:], np.float32)
        )
        self.sample_space = tuple(store.shape[2:])
        self.longitude_periodic = store.longitude_periodic  # whether blocks, coarse-ups and padding wrap
        self.store_dtype = store.dtype
        # Positional and temporal channels after the static ones, computed per batch (loaders.encodings)
        self.encodings = Encodings(store, encodings) if encodings else None

    # -- shapes -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def input_channels(self) -> list[str]:
        """Names of the input channels in order: `<channel>@t-<k>` for history steps, then static."""
        names = []
        for k in range(self.history, -1, -1):
            suffix = f"@t-{k}" if k else ""
            names += [self.store_channels[c] + suffix for c in self.channels]
        return names + self.static_names + (self.encodings.names if self.encodings else [])

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

    # -- reading ------------------------------------------------------------------------
    def _read_steps(self, start: int, stop: int) -> np.ndarray:
        """Normalised steps [start, stop) of the store's time axis, all channels."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = int(self.times[i])
        window = self._read_steps(t - self.history, t + self.leads[-1] + 1)
        x = window[: self.history + 1][:, self.channels].reshape((-1,) + self.sample_space)
        x = np.concatenate([x.astype(np.float32), self.static])
        if self.encodings is not None:
            x = np.concatenate([x, self.encodings.fields([t])[0].numpy()])
        y = np.concatenate([window[self.history + lead][self.y_channels] for lead in self.leads]).astype(np.float32)
        sample = torch.from_numpy(x), torch.from_numpy(y)
        return sample if self.transform is None else self.transform(*sample)


class StoreDataset(WindowDataset):
    """Windows read from the store's memory-mapped `data`; picklable, each process maps lazily.

    Parameters
    ----------
    store : a Store or the path of one.
    split : "train", "val" or "test".
    lead : steps between the last input and the target, or a list of such leads (y stacks the targets
        at each, nearest first; the window reaches to the farthest).
    history : extra past steps stacked before the current one as input channels.
    channels, targets : channel names for inputs and targets (default: all; targets default to the input
        channels except the `<channel>_valid` masks, which are targets only when named).
    static : append the store's static fields (True), none (False), or the named ones.
    transform : called as `transform(x, y)` on each sample, returns the new (x, y) (torchvision's
        convention); `BatchLoader` takes its own, applied to whole batches on the device.
    target_masks : append to y, after the targets, the `<channel>_valid` channel of each target in
        `masked_targets` (stored normalised: `Store.denormalise` gives 1 observed / 0 filled).
    encodings : positional and temporal channels appended to x after the static fields, any of
        "latlon", "doy", "hod", "toa" (see `loaders.encodings`); `BatchLoader` computes them on the device.
    """

    _array = None

    def __getstate__(self) -> dict:
        # Never pickle the memmap (that would copy the whole store): workers re-map on first use.
        state = self.__dict__.copy()
        state.pop("_array", None)
        return state

    @property
    def array(self):
        """The store's data, mapped on first use in each process, from the same build as this dataset.

        A rebuild may replace the store while a training job runs: a process that already mapped it
        keeps reading the old data; one that maps it later (a new DataLoader worker) gets a clear
        error instead of windows from one build over data from another.
        """
        if self._array is None:
            self._check_same_build()
            array = open_store(self.path).array
            self._check_same_build()  # not replaced while mapping either
            self._array = array
        return self._array

    def _check_same_build(self) -> None:
        if store_identity(self.path) != self.store_identity:
            raise StoreError(
                f"{self.path} was rebuilt after this dataset was created; create the dataset "
                "(and its DataLoader) again to read the new store"
            )

    def _read_steps(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def _whole_samples(self) -> bool:
        n = len(self.store_channels)
        return np.array_equal(self.channels, np.arange(n)) and np.array_equal(self.y_channels, self.channels)

    def batch_shapes(self, batch: int, static: bool = True) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of `gather`'s (x, y) for `batch` samples; x ends with the static fields if `static`."""
        x_channels = (self.history + 1) * self.channels.size + (self.static.shape[0] if static else 0)
        y_channels = len(self.leads) * self.y_channels.size
        return (batch, x_channels) + self.sample_space, (batch, y_channels) + self.sample_space

    def gather(
        self,
        positions: Sequence[int],
        x_out: np.ndarray | None = None,
        y_out: np.ndarray | None = None,
        static: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Copy samples `positions` into (x, y) in the store's dtype: `gather(p)[k]` is `self[p[k]]`.

        `static=False` leaves the static fields out of x (the GPU path adds them on the device), so
        that each output is ONE `np.take` from the memmap: the GIL is released for the whole copy
        and the training thread keeps it. With them, each sample's window is copied straight into
        its place in x (a slice copy: one contiguous run of the file when all channels are taken).
        Sorted positions read the file front to back. `x_out`/`y_out` (C-contiguous, e.g. a pinned
        buffer's `.numpy()`) are filled in place instead of allocating.
        """
        t = self.times[np.asarray(positions, dtype=np.int64)]
        x_shape, y_shape = self.batch_shapes(t.size, static)
        x_out = np.empty(x_shape, self.store_dtype) if x_out is None else x_out
        y_out = np.empty(y_shape, self.store_dtype) if y_out is None else y_out
        steps_in = t[:, None] + np.arange(-self.history, 1)[None, :]
        steps_out = t[:, None] + np.asarray(self.leads)[None, :]  # (batch, lead)
        array = self.array
        if isinstance(array, zarr.Array):  # a compressed store: decode each needed step once
            needed = np.unique(np.concatenate([steps_in.ravel(), steps_out.ravel()]))
            array = np.asarray(array.oindex[needed])
            steps_in, steps_out = np.searchsorted(needed, steps_in), np.searchsorted(needed, steps_out)
        whole = self._whole_samples()
        n = 1 if whole else len(self.store_channels)
        if whole:  # a row is a whole time step
            rows_in, rows_out = steps_in, steps_out.ravel()
        else:  # a row is one (step, channel) field
            rows_in = (steps_in[:, :, None] * n + self.channels[None, None, :]).reshape(t.size, -1)
            rows_out = (steps_out[:, :, None] * n + self.y_channels[None, None, :]).ravel()
        if not static or not self.static.shape[0]:
            take_rows(array, rows_out, y_out.reshape(rows_out.size, -1), n)
            take_rows(array, rows_in.ravel(), x_out.reshape(rows_in.size, -1), n)
            return x_out, y_out
        dynamic = (self.history + 1) * self.channels.size
        for k in range(t.size):  # x_out[k, :dynamic] is contiguous, so the reshapes are views
            into = x_out[k, :dynamic].reshape(rows_in.shape[1], -1)
            if whole and isinstance(array, np.ndarray):  # slice copies: faster than np.take for rows this large
                into[:] = array[steps_in[k, 0] : steps_in[k, -1] + 1].reshape(into.shape)
            else:
                take_rows(array, rows_in[k], into, n)
        take_rows(array, rows_out, y_out.reshape(rows_out.size, -1), n)
        x_out[:, dynamic:] = self.static
        return x_out, y_out


def worker_init_fn(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from torch's per-worker seed (base seed + id).

    With a seeded DataLoader `generator`, any randomness in a worker is then reproducible for any
    number of workers; torch itself is already seeded by the DataLoader.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU torch.Generator for DataLoader(generator=...) and samplers."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g
