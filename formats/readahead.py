"""Read a cold batch ahead: tell the kernel which bytes a gather is about to copy from a memmap.

A copy out of a memmap whose pages are not in the page cache faults them in one readahead window at a
time, each fault a synchronous read: on a cold store the batch path waits on the disk one window after
another. `madvise(MADV_WILLNEED)` over a step's bytes starts the reads of all of them at once, so the disk
sees the whole batch queued. On pages already in the cache the call still walks them (8 us for a 0.46 MB
step on the 2-core box), and a prototype that advised every step read x0.58 warm at s: so `ReadAhead` asks
`mincore` first, and a warm batch costs one look at one page.

Measured with the peers' canonstore-batch row (README, "Reading a cold store ahead"), each run in its own
process, 9 cold rounds interleaved with runs without it: cold x1.13 (rounds 0.83-1.71) at s, above x1 by the
median in all three versions measured; at m and l, where this VM's faults already read 8 MiB at a time, x0.84
and x0.89 here and up to x1.19 and x1.14 in earlier versions: no effect these spreads can tell. Warm, 100
interleaved pairs of passes in one process at s: x0.993, where two identical loaders measure x1.000.

A hint only: what the gather copies is the same with it or without it, and a call that fails warns once and
reading goes on without it. Where the process may neither own nor write the store's files, Linux's `mincore`
says every page is cached (so as not to leak another user's reads): such a store is never read ahead.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import warnings

import numpy as np

from canonstore.buffers import PAGE
from canonstore.formats.shards import ShardedArray


def _libc():
    """libc's `mincore` and `madvise` through ctypes, or None (Windows). `mincore` of one page takes 1.6 us and
    keeps the GIL (a call that releases it must win it back, behind whichever thread holds it then); `madvise`
    may wait to queue reads, so it releases it."""
    try:
        mincore, madvise = ctypes.PyDLL(None, use_errno=True).mincore, ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # no libc by that name, or no such calls in it
        return None
    mincore.argtypes, mincore.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p], ctypes.c_int
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return mincore, madvise


_CALLS = _libc() if hasattr(mmap, "MADV_WILLNEED") else None


def pages(address: int, nbytes: int) -> tuple[int, int]:
    """(start, length) of the whole pages holding bytes [address, address + nbytes): madvise and mincore take
    nothing else (EINVAL). A step is not always a whole number of pages (8,131,200 bytes on the m grid)."""
    start = address - address % PAGE
    return start, -(-(address + nbytes - start) // PAGE) * PAGE


class ReadAhead:
    """Advise the kernel of the pages of a batch's rows that are not in the page cache, just before they are
    copied.

    A row is a whole step, or one of its `per_step` fields (one channel) when a dataset takes only some
    channels: only the bytes the gather copies are asked for. Warm, a batch costs one `mincore` of one page
    (1.6 us). Once a batch finds pages missing, every page of the batches after it is looked at (one `mincore`
    per run of consecutive rows) until one batch finds them all cached: in a cold pass more and more steps are
    cached already (each is read by two samples, as input and as target), and a batch whose first row happens
    to be among them must still have its others read ahead. A store larger than the page cache stays in
    this mode.
    """

    def __init__(self, where):
        self.where = where  # the store, for the warning
        self.cold = True  # the first batch looks at every page
        self.failed = False

    def __call__(self, array, per_step: int, *rows: np.ndarray) -> int:
        """Advise the missing pages of the `rows` arrays of `array` (a memmap or a ShardedArray) seen as
        (steps * per_step) rows; how many runs of consecutive missing pages were advised."""
        if _CALLS is None or self.failed or not isinstance(array, (np.memmap, ShardedArray)):
            return 0  # in memory already (a decoded compressed batch, a plain array), or no way to ask
        first = next((int(part.flat[0]) for part in rows if part.size), None)
        if first is None:
            return 0
        advised = 0
        try:
            if not self.cold:
                _held, address, size = _row_bytes(array, first, per_step)  # _held: kept mapped while looked at
                if _cached(_page_within(address, size)):
                    return 0
            for _held, address, nbytes in _runs(array, np.unique(np.concatenate([p.ravel() for p in rows])), per_step):
                for start, length in _missing(*pages(address, nbytes)):
                    for piece in _pieces(start, length):
                        _check(_CALLS[1](*piece, mmap.MADV_WILLNEED), "madvise")
                    advised += 1
        except _CallFailed as error:
            self.failed = True  # a hint: never the reason a training run stops
            warnings.warn(f"reading ahead in {self.where} stopped: {error}; reading on without it", stacklevel=2)
            return 0
        self.cold = advised > 0
        return advised


def _row_bytes(array, row: int, per_step: int) -> tuple[np.memmap, int, int]:
    """(the memmap holding `row`, the address of its first byte, a row's size in bytes); holding the memmap
    keeps its bytes mapped, whatever a ShardedArray's cache of mapped shards drops meanwhile."""
    if isinstance(array, ShardedArray):
        k = array.layout.shard_of(row // per_step)
        array, row = array.shard(k), row - k * array.shard_steps * per_step
    size = array.strides[0] // per_step
    return array, array.ctypes.data + row * size, size


def _runs(array, rows: np.ndarray, per_step: int):
    """(memmap, address, nbytes) of each run of consecutive sorted `rows` within one memmap."""
    if not rows.size:
        return
    shard = array.layout.shard_of(rows // per_step) if isinstance(array, ShardedArray) else np.zeros_like(rows)
    cuts = np.flatnonzero((np.diff(rows) != 1) | (shard[1:] != shard[:-1])) + 1
    for run in np.split(rows, cuts):
        mapped, address, size = _row_bytes(array, int(run[0]), per_step)
        yield mapped, address, size * run.size


# The kernel reads at most max(read_ahead_kb, max_sectors_kb) of one WILLNEED (force_page_cache_ra), so a
# run of 16 MB (a window of two 8 MB steps) is advised in pieces, each no larger than most disks take in
# one request. The piece size is not what the measurements chose: cold at m, 9 interleaved rounds of an
# earlier version, 1 MiB pieces read x1.43 (0.94-1.88) of no advice, 128 KiB x1.14 (0.60-2.02) and 8 MiB
# x1.09 (0.54-1.68), ranges that overlap.
_CHUNK = 1 << 20


def _pieces(start: int, length: int):
    for at in range(start, start + length, _CHUNK):
        yield at, min(_CHUNK, start + length - at)


def _page_within(address: int, size: int) -> int:
    """A page wholly inside the row's bytes where there is one: a row that is not a whole number of pages
    shares its first page with the row before (8,131,200 bytes at m), which may be cached when it is not."""
    inside = address + (-address % PAGE)
    return inside if inside + PAGE <= address + size else address


def _cached(address: int) -> bool:
    """Whether the page holding `address` is in the page cache."""
    resident = ctypes.c_ubyte(0)
    _check(_CALLS[0](address - address % PAGE, PAGE, ctypes.byref(resident)), "mincore")
    return bool(resident.value & 1)


def _missing(start: int, length: int) -> list[tuple[int, int]]:
    """(start, length) of each run of pages in [start, start + length) that is not in the page cache."""
    resident = np.zeros(length // PAGE, np.uint8)
    _check(_CALLS[0](start, length, resident.ctypes.data), "mincore")
    missing = np.concatenate([[0], (resident & 1) == 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(missing))  # where runs of missing pages begin and end
    return [(start + int(a) * PAGE, int(b - a) * PAGE) for a, b in zip(edges[::2], edges[1::2])]


class _CallFailed(Exception):
    """mincore or madvise failed: the hint stops; other errors (a shard that will not open) are the copy's."""


def _check(result: int, call: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        if code != errno.EAGAIN:  # the kernel had no room to start reads: this hint goes unheard, the next may not
            raise _CallFailed(f"{call} failed: {os.strerror(code)} (errno {code})")
