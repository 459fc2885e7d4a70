"""The page cache, for the benchmarks: evict files from it, and read files cold (buffered or O_DIRECT).

Shared by bench/loader.py (`--cold`) and bench/peers/run.py: a cold row evicts its files first, and the
disk's limits are sequential reads of the same files, through the page cache and past it.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path


def files_of(path: Path) -> list[Path]:
    return sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())


def evict(paths) -> None:
    """Drop the files' pages from the page cache (no root needed; dirty pages are written first)."""
    os.sync()
    for path in paths:
        for f in files_of(Path(path)):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_all(paths, direct: bool = False) -> dict:
    """Read every file start to end in 16 MiB requests (O_DIRECT: past the page cache): MB/s."""
    buf = mmap.mmap(-1, 16 << 20)  # page aligned, as O_DIRECT needs
    total, start = 0, time.perf_counter()
    for path in paths:
        for f in files_of(Path(path)):
            fd = os.open(f, os.O_RDONLY | (os.O_DIRECT if direct else 0))
            try:
                while (got := os.readv(fd, [buf])) > 0:
                    total += got
            finally:
                os.close(fd)
    elapsed = time.perf_counter() - start
    return {"mb": round(total / 1e6, 1), "seconds": round(elapsed, 3), "mb_per_s": round(total / elapsed / 1e6, 1)}
