"""Host buffers that memory-mapped samples are copied into, placed where the copy runs at full speed.

A store's steps sit at page-aligned offsets of their shard files whenever a step is a whole number of
pages (any grid with a power of two in it: 64x128 float32 steps are), and a memmap puts offset 0 on a
page boundary. A large `np.empty` comes from glibc's `mmap`, whose data starts 16 bytes into its first
page, so every sample's destination then lies 16 bytes past its source modulo 4096. The CPU takes each
load that follows a store to the same address modulo 4096 as if it might depend on it (4K aliasing)
and waits. Measured on the 2-core machine (one thread, the same 0.46 MB samples of a memmap, 4 interleaved
rounds): 1.7-2.7 GB/s into a buffer 16 bytes past a page boundary, 7-12 GB/s into a page-aligned one; the
batch loader's CPU path went from 4.0 to 8.4 GB/s. Where glibc puts a large block depends on what was freed
before, so the old speed also moved from run to run. A page-aligned buffer keeps each destination at its
source's offset whenever that offset is fixed (every step a whole number of pages).
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE = mmap.PAGESIZE


def page_aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` and `dtype` whose data starts on a page boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + PAGE, np.uint8)  # numpy still asks for huge pages for it, as for any large array
    start = -raw.ctypes.data % PAGE
    return raw[start : start + nbytes].view(dtype).reshape(shape)
