"""`data` over many shard files, indexed like one NumPy array: `ShardedArray`.

Each shard is memory-mapped on first use and at most `max_mapped` stay mapped (least recently
used first out), so a 100 TB store never needs 100 TB of address space. A view handed out keeps
its own shard mapped for as long as it lives, whatever the cache drops. Shards come only from the
store that was opened: after a rebuild, mapping one more raises (`formats.handle`).

    >>> a = open_store("era5.zarr").array          # ShardedArray when the store has several shards
    >>> a[10]                                       # a view into one shard, zero copy
    >>> a[[3, 9000, 9001]]                          # a copy, one take per run of steps in one shard
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from canonstore.buffers import page_aligned_empty
from canonstore.formats.handle import StoreHandle
from canonstore.formats.indexing import broadcast_shape, index_parts, is_basic, takes_no_axis
from canonstore.formats.zarr_ import ShardLayout, map_shard


class ShardedArray:
    """A read-only (time, channel, *space) array whose steps live in shard files of `shard_steps`."""

    def __init__(
        self, store: Path | StoreHandle, shape: tuple[int, ...], dtype: np.dtype, shard_steps: int, max_mapped: int = 64
    ):
        # Shards are mapped from the store opened here (or by the Store that passes its handle): never from
        # a store that a rebuild published at the same path since; that raises instead (formats.handle).
        self.handle = store if isinstance(store, StoreHandle) else StoreHandle(store)
        self.store, self.shape, self.shard_steps = self.handle.path, tuple(shape), int(shard_steps)
        self.dtype = np.dtype(dtype)
        self.layout = ShardLayout(self.shape[0], self.shard_steps)
        self.shards = self.layout.count
        self.max_mapped = max(1, max_mapped)
        self._mapped: OrderedDict[int, np.memmap] = OrderedDict()
        self._lock = threading.Lock()  # the batch loader's threads map shards at once

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_mapped": OrderedDict()}  # maps are per process, never pickled
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<ShardedArray {self.shape} {self.dtype}, {self.shards} shards of {self.shard_steps} steps>"

    def shard(self, k: int) -> np.memmap:
        """Shard `k` as a memmap, mapped (and its index checked) on first use."""
        with self._lock:  # another thread's eviction between the lookup and move_to_end raised KeyError
            if k in self._mapped:
                self._mapped.move_to_end(k)
                return self._mapped[k]
        mapped = map_shard(self.handle, self.shape, self.dtype, self.shard_steps, k)
        with self._lock:
            self._mapped[k] = mapped
            while len(self._mapped) > self.max_mapped:
                self._mapped.popitem(last=False)
        return mapped

    # -- indexing: exactly NumPy's semantics (`np.asarray(a)[key]`), views where NumPy gives them -----------
    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if isinstance(first, slice):
            steps = range(self.shape[0])[first]
            if steps.step == 1 and len(steps) and self.layout.shard_of(steps[0]) == self.layout.shard_of(steps[-1]):
                k, local = self.layout.locate(steps[0])
                local = slice(local, local + len(steps))
                return self.shard(k)[(local,) + rest]  # inside one shard: a view, as a memmap gives
        elif not isinstance(first, (bool, np.bool_)):  # True is an index of its own in NumPy, not step 1
            try:
                step = operator.index(first)
            except TypeError:
                pass
            else:
                k, local = self.layout.locate(self._step(step))
                return self.shard(k)[(local,) + rest]  # one step: a view, whatever the other indices
        return self._index(index_parts(key, self.shape))

    def _step(self, step: int) -> int:
        if not -self.shape[0] <= step < self.shape[0]:
            raise IndexError(f"index {step} is out of bounds for axis 0 with size {self.shape[0]}")
        return step % self.shape[0]

    def _index(self, parts: tuple):
        """`parts` (from `index_parts`): part `at` indexes time, as an int, a slice or an int array."""
        at, time = next((i, p) for i, p in enumerate(parts) if not takes_no_axis(p))
        others = parts[:at], parts[at + 1 :]
        if not isinstance(time, (slice, np.ndarray)):  # an integer after None or a boolean scalar
            k, local = self.layout.locate(self._step(operator.index(time)))
            return self.shard(k)[others[0] + (local,) + others[1]]
        if isinstance(time, slice):
            rows = np.arange(*time.indices(self.shape[0]))
        else:
            if time.dtype.kind not in "iu":
                raise IndexError("arrays used as indices must be of integer (or boolean) type")
            arrays = [p for p in others[0] + others[1] if isinstance(p, np.ndarray)]
            if arrays:  # NumPy broadcasts the index arrays first and checks only the values it uses
                time = np.broadcast_to(time, broadcast_shape([time] + arrays))
            bad = time[(time < -self.shape[0]) | (time >= self.shape[0])]
            if bad.size:
                raise IndexError(f"index {bad.flat[0]} is out of bounds for axis 0 with size {self.shape[0]}")
            rows = time.astype(np.int64) % self.shape[0]
        if at == 0 and all(p is Ellipsis or (isinstance(p, slice) and p == slice(None)) for p in others[1]):
            out = page_aligned_empty((rows.size,) + self.shape[1:], self.dtype)  # whole steps: the batch path
            if rows.size:
                self.take_rows(rows.ravel(), out.reshape(rows.size, -1))
            return out.reshape(rows.shape + self.shape[1:])
        if isinstance(time, slice) or (rows.ndim == 1 and all(is_basic(p) for p in others[0] + others[1])):
            return self._per_shard(rows, time, others)
        # Time broadcast with other arrays: the steps it names, gathered once, indexed by NumPy itself.
        steps, local = np.unique(rows, return_inverse=True)
        gathered = self[steps]
        return gathered[others[0] + (local.reshape(rows.shape),) + others[1]]

    def _per_shard(self, rows: np.ndarray, time, others: tuple):
        """Index each shard's run of `rows` by itself and join the pieces along the output's time axis."""

        def local_index(k: int, run: np.ndarray):
            local = run - self.layout.range(k)[0]
            if not isinstance(time, slice):
                return local
            step = time.indices(self.shape[0])[2]
            stop = int(local[-1]) + step
            return slice(int(local[0]), stop if stop >= 0 else None, step)  # a slice stays a slice (basic)

        def shape_with(steps: int) -> tuple[int, ...]:  # of the output for `steps` steps, from an array of no memory
            proxy = np.broadcast_to(np.zeros((), self.dtype), (steps,) + self.shape[1:])
            local = slice(None) if isinstance(time, slice) else np.arange(steps)
            return proxy[others[0] + (local,) + others[1]].shape

        pieces = [
            self.shard(k)[others[0] + (local_index(k, rows[a:b]),) + others[1]] for k, a, b in self._runs(rows, 1)
        ]
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return np.empty(shape_with(0), self.dtype)
        axis = next(i for i, (one, two) in enumerate(zip(shape_with(1), shape_with(2))) if one != two)
        return np.concatenate(pieces, axis=axis)  # along where NumPy puts the time axis

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __iter__(self):
        for i in range(self.shape[0]):
            yield self[i]

    # -- the batch path ---------------------------------------------------------------------
    def _runs(self, rows: np.ndarray, per_step: int):
        """(shard, a, b): rows[a:b] all lie in one shard, for consecutive runs of `rows`."""
        shard = self.layout.shard_of(rows // per_step)
        if rows.size and (shard == shard[0]).all():  # one shard (a sample's window, mostly): 3 us, not 30
            return [(int(shard[0]), 0, int(rows.size))]
        cuts = np.flatnonzero(shard[1:] != shard[:-1]) + 1
        edges = np.concatenate([[0], cuts, [rows.size]])
        return [(int(shard[a]), int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def take_rows(self, rows: np.ndarray, out: np.ndarray, per_step: int = 1) -> np.ndarray:
        """Copy rows into `out` (len(rows), row_size) in place; a row is a step (`per_step` 1) or one of a
        step's `per_step` equal parts (a channel). One np.take per run of rows in one shard, straight into
        `out`: sorted rows make one take per shard."""
        rows = _checked(rows, self.shape[0] * per_step)
        for k, a, b in self._runs(rows, per_step):
            flat = self.shard(k).reshape(-1, out.shape[1])
            np.take(flat, rows[a:b] - self.layout.range(k)[0] * per_step, axis=0, out=out[a:b], mode="clip")
        return out

    def copy_windows(self, starts: np.ndarray, width: int, out: np.ndarray) -> np.ndarray:
        """`copy_windows` over shards: one copy per window inside a shard, one per step of a window across shards."""
        starts = _checked(np.asarray(starts, dtype=np.int64), self.shape[0] - width + 1)
        first, last = self.layout.shard_of(starts), self.layout.shard_of(starts + width - 1)
        local, step = starts - first * self.shard_steps, out.shape[1] // max(1, width)
        put = _put_into(out, self.dtype)
        held, windows = -1, None  # the shard of the window before: sorted windows look each shard up once
        for k, (row, a, shard, end) in enumerate(zip(out, local.tolist(), first.tolist(), last.tolist(), strict=True)):
            if shard == end:
                if shard != held:  # a plain ndarray view of the memmap: no memmap work per sample
                    held, windows = shard, _windows_of(np.asarray(self.shard(shard)), width)
                put(row, windows[a])
            else:
                for j in range(width):  # slices of the row itself: always written in place
                    np.copyto(out[k, j * step : (j + 1) * step], self[int(starts[k]) + j].reshape(-1))
        return out


def _checked(rows, n: int) -> np.ndarray:
    """`rows` as int64, every one in [0, n), else IndexError.

    Checked here so that np.take can run with mode="clip": with the default mode="raise" and `out`,
    numpy gathers into a temporary and copies it into `out`, about 3x slower (2.1-2.6 vs 6.5-7.6 GB/s
    for 32 rows of 0.46 MB, measured on the 2-core box)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        bad = rows[(rows < 0) | (rows >= n)][0]
        raise IndexError(f"row {bad} is out of range for {n} rows")
    return rows


def take_rows(array, rows: np.ndarray, out: np.ndarray, per_step: int = 1) -> np.ndarray:
    """`out[i] = row rows[i]` of a memmap or ShardedArray seen as (time * per_step, row) rows."""
    if isinstance(array, ShardedArray):
        return array.take_rows(rows, out, per_step)
    flat = array.reshape(-1, out.shape[1])
    return np.take(flat, _checked(rows, flat.shape[0]), axis=0, out=out, mode="clip")


def copy_windows(array, starts: np.ndarray, width: int, out: np.ndarray) -> np.ndarray:
    """`out[k] = array[starts[k] : starts[k] + width]` flattened, for a memmap or ShardedArray; `out` is
    (len(starts), width * step size), each row contiguous, rows maybe apart (x's static fields follow them).
    A window of whole steps is one run of the file: one copy per sample, with no per-sample indexing work
    (a ShardedArray slice took 8 us a sample, 6% of a batch's time at s)."""
    if isinstance(array, ShardedArray):
        return array.copy_windows(starts, width, out)
    starts = _checked(np.asarray(starts, dtype=np.int64), array.shape[0] - width + 1)
    put, windows = _put_into(out, array.dtype), _windows_of(np.asarray(array), width)
    for row, a in zip(out, starts.tolist(), strict=True):  # a row per window: a shorter `out` is an error
        put(row, windows[a])
    return out


def _windows_of(steps: np.ndarray, width: int):
    """What `[a]` gives the window of steps a .. a + width - 1 of, as one flat row: of a C-contiguous array (a
    memmap, a shard) a view, in which each window is one run of the steps' bytes; of another (a strided slice of
    a memmap) `_Windows`, each window a copy."""
    flat = steps.reshape(steps.shape[0], -1)
    if width == 1:
        return flat
    if not flat.flags.c_contiguous:  # `reshape` can give a view of rows apart: windows are then not runs
        return _Windows(flat, width)
    count = max(0, flat.shape[0] - width + 1)
    # over flat's own buffer, so numpy checks that the last window ends within it
    return np.ndarray((count, width * flat.shape[1]), flat.dtype, buffer=flat, strides=flat.strides)


class _Windows:
    """Windows of a (steps, values) array whose steps are not one run of bytes: each one flattened as a copy."""

    def __init__(self, flat: np.ndarray, width: int):
        self.flat, self.width = flat, width

    def __getitem__(self, a: int) -> np.ndarray:
        return self.flat[a : a + self.width].reshape(-1)


def _put_into(out: np.ndarray, dtype: np.dtype):
    """How a window is put into a row of `out`: `row[...] = window`, the same copy as np.copyto (without the GIL)
    at a third of its cost per call (0.31-0.34 against 0.87 us with the views it needed), which a batch pays once
    per sample and output; np.copyto itself where `out` has another dtype, for its same_kind casting rule."""
    return _put_row if out.dtype == dtype else np.copyto


def _put_row(row: np.ndarray, window: np.ndarray) -> None:
    row[...] = window


def take_fields(array, steps: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """(len(steps), len(channels), *space) copy of the given channels of the given steps, reading only
    those fields (a memmap, a ShardedArray, or a compressed store's zarr array)."""
    steps, channels = np.asarray(steps, dtype=np.int64), np.asarray(channels, dtype=np.int64)
    shape = (steps.size, channels.size) + tuple(array.shape[2:])
    if not isinstance(array, (np.ndarray, ShardedArray)):
        return np.asarray(array.oindex[steps, channels])
    out = page_aligned_empty(shape, array.dtype)
    if out.size:
        rows = (steps[:, None] * array.shape[1] + channels[None, :]).ravel()
        take_rows(array, rows, out.reshape(rows.size, -1), array.shape[1])
    return out
