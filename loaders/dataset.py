"""A memory-mapped PyTorch Dataset over one split of a store: the torch side of `loaders.windows`.

Sample `i` is a forecast pair, its window chosen by `Windows` (inputs at t and the `history` steps
before it, targets at t + each lead). Reads come straight from the store's memmap; the only copy is into
the output (a sample, or a whole batch with `gather`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from canonstore.buffers import page_aligned_empty
from canonstore.errors import StoreError
from canonstore.formats import open_store
from canonstore.formats.manifest import store_identity
from canonstore.formats.readahead import ReadAhead
from canonstore.formats.remote_store import pull_first
from canonstore.formats.shards import ShardedArray, copy_windows, take_rows
from canonstore.loaders.encodings import Encodings
from canonstore.loaders.windows import Windows
from canonstore.splits import check_split


def _of_windows(name: str) -> property:
    return property(lambda self: getattr(self.windows, name), doc=f"`loaders.windows.Windows.{name}`")


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
        if store.remote:  # training reads memory-mapped shards: an s3:// store is pulled to local disk first
            raise StoreError(pull_first(store.path, "a dataset or loader"))
        check_split(split)
        self.windows = Windows.of(store, split, lead, history, channels, targets, static, target_masks, encodings)
        self.path, self.split, self.transform = store.path, split, transform
        self.store_identity = store.build_id  # which build the windows belong to (the Store's own)
        names = self.windows.static_names
        self.static = (
            np.stack([store.static[n] for n in names]).astype(np.float32)
            if names
            else np.zeros((0,) + store.shape[2:], np.float32)
        )
        self.sample_space = tuple(store.shape[2:])
        self.longitude_periodic = store.longitude_periodic  # whether patches, coarse-ups and padding wrap
        self.store_dtype = store.dtype
        # Positional and temporal channels after the static ones, computed per batch (loaders.encodings)
        self.encodings = Encodings(store, encodings) if encodings else None

    # What `Windows` says, under the names the batch loader and the training read
    times = _of_windows("times")
    history = _of_windows("history")
    leads = _of_windows("leads")
    store_channels = _of_windows("store_channels")
    channels = _of_windows("channels")
    targets = _of_windows("targets")
    masked_targets = _of_windows("masked_targets")
    y_channels = _of_windows("y_channels")
    static_names = _of_windows("static_names")
    input_channels = _of_windows("input_channels")
    target_channels = _of_windows("target_channels")
    lead_channels = _of_windows("lead_channels")

    def __len__(self) -> int:
        return int(self.times.size)

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
    _read_ahead = None

    def __getstate__(self) -> dict:
        # Never pickle the memmap (that would copy the whole store): workers re-map on first use.
        state = self.__dict__.copy()
        state.pop("_array", None)
        state.pop("_read_ahead", None)
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
            self._array, self._read_ahead = array, ReadAhead(self.path)
        return self._array

    def _check_same_build(self) -> None:
        if store_identity(self.path) != self.store_identity:
            raise StoreError(
                f"{self.path} was rebuilt after this dataset was created; create the dataset "
                "(and its DataLoader) again to read the new store"
            )

    def _read_steps(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def batch_shapes(self, batch: int, static: bool = True) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of `gather`'s (x, y) for `batch` samples; x ends with the static fields if `static`."""
        return self.windows.batch_shapes(batch, self.sample_space, static)

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
        steps_in, steps_out = self.windows.steps(positions)
        x_shape, y_shape = self.batch_shapes(steps_in.shape[0], static)
        x_out = page_aligned_empty(x_shape, self.store_dtype) if x_out is None else x_out
        y_out = page_aligned_empty(y_shape, self.store_dtype) if y_out is None else y_out
        if not (x_out.flags.c_contiguous and y_out.flags.c_contiguous):  # a reshape of another would be a copy
            raise ValueError("gather fills x_out and y_out through reshaped views: both must be C-contiguous")
        array = self.array
        if isinstance(array, zarr.Array):  # a compressed store: decode each needed step once
            needed = np.unique(np.concatenate([steps_in.ravel(), steps_out.ravel()]))
            array = np.asarray(array.oindex[needed])
            steps_in, steps_out = np.searchsorted(needed, steps_in), np.searchsorted(needed, steps_out)
        rows_in, rows_out, n = self.windows.rows(steps_in, steps_out)
        # from a memmap: a cold batch's bytes are asked for at once, not faulted in window by window
        self._read_ahead(array, n, rows_in, rows_out)
        if not static or not self.static.shape[0]:
            take_rows(array, rows_out, y_out.reshape(rows_out.size, -1), n)
            take_rows(array, rows_in.ravel(), x_out.reshape(rows_in.size, -1), n)
            return x_out, y_out
        dynamic = (self.history + 1) * self.channels.size
        if self.windows.whole_steps and isinstance(array, (np.ndarray, ShardedArray)):
            # A window of whole steps is one run of the file, a target one step: one copy each, straight into
            # x's rows and y's (views: the outputs are C-contiguous), the static fields after x's. Over many
            # shards a take per run of rows in one shard took y 1.17x its one-shard time at s.
            x_rows = x_out.reshape(len(x_out), -1)[:, : dynamic * int(np.prod(self.sample_space))]
            copy_windows(array, steps_in[:, 0], steps_in.shape[1], x_rows)
            y_leads = y_out.reshape(len(y_out), len(self.leads), -1)
            for j in range(len(self.leads)):
                copy_windows(array, steps_out[:, j], 1, y_leads[:, j])
        else:
            for k in range(rows_in.shape[0]):  # x_out[k, :dynamic] is contiguous, so the reshape is a view
                take_rows(array, rows_in[k], x_out[k, :dynamic].reshape(rows_in.shape[1], -1), n)
            take_rows(array, rows_out, y_out.reshape(rows_out.size, -1), n)
        x_out[:, dynamic:] = self.static
        return x_out, y_out
