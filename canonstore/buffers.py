"""Buffers that a store's bytes are copied or read into, placed where the copy runs at full speed.

Memory maps and the page cache start on a page boundary, so a step of a shard file sits at a fixed
offset within its pages whenever a step is a whole number of pages (a 64x128 float32 field is 8 pages;
a 721x1440 one is not, and its steps' offsets then vary). A large `np.empty` comes from glibc's `mmap`,
whose data starts 16 bytes into its first page: every destination then lies 16 bytes past its source
modulo 4096. The CPU takes each load that follows a store to the same address modulo 4096 as if it might
depend on it (4K aliasing) and waits; the kernel's copy behind a `pread` from the page cache does too.

Measured on the 2-core machine, one thread, 4-5 interleaved rounds: 0.46 MB samples of a memmap copied
at 1.7-2.7 GB/s into a buffer 16 bytes past a page and at 7-12 GB/s into a page-aligned one; `os.preadv`
of 64 MB from the page cache at 2.1-2.3 against 4.9-5.9 GB/s. A write from such a buffer into the page
cache is not affected (its destination lies before its source). Where glibc puts a large block depends
on what was freed before, so the old speed also moved from run to run.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE = mmap.PAGESIZE


def page_aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` and `dtype` whose data starts on a page boundary."""
    dtype = np.dtype(dtype)
    if any(int(d) < 0 for d in shape):  # np.empty's own check: a negative size would shorten the slice instead
        raise ValueError(f"negative dimensions are not allowed: {tuple(shape)}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + PAGE, np.uint8)  # numpy still asks for huge pages for it, as for any large array
    start = -raw.ctypes.data % PAGE
    return raw[start : start + nbytes].view(dtype).reshape(shape)
