"""Reading a cold batch ahead: the advised ranges are whole pages over exactly the rows a gather copies, the
kernel does start reading them, a warm batch costs one probe, and a failing call warns once and stops
(`loaders.dataset` calls it in gather)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time

import numpy as np
import pytest

from canonstore import open_store
from canonstore.formats import readahead
from canonstore.formats.readahead import PAGE, ReadAhead, pages
from canonstore.formats.shards import ShardedArray

pytestmark = pytest.mark.skipif(
    readahead._CALLS is None or not hasattr(os, "posix_fadvise"), reason="no mincore/madvise/fadvise here"
)

STEP = 5000  # bytes: not a whole number of pages, as a 121x240 grid's steps are not (8,131,200 bytes at m)


def cold_steps(path, steps: int = 400) -> np.memmap:
    """A (steps, STEP) file written and dropped from the page cache before it is mapped (pages that a process
    maps stay cached); skips where the filesystem keeps them cached anyway (tmpfs)."""
    path.write_bytes(np.arange(steps * STEP, dtype=np.uint8).tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(steps, STEP))
    # a fault reads only its own page, not the kernel's readahead window around it (8 MiB on the 2-core box)
    assert readahead._CALLS[1](*pages(mapped.ctypes.data, mapped.nbytes), mmap.MADV_RANDOM) == 0
    if readahead._cached(mapped.ctypes.data):
        pytest.skip("this filesystem keeps the file's pages in memory")
    return mapped


def cached(mapped, step: int, size: int = STEP) -> bool:
    """Whether every page of the step (or field) is in the page cache."""
    return not readahead._missing(*pages(mapped.ctypes.data + step * size, size))


def wait_until_cached(mapped, steps, size: int = STEP) -> bool:
    deadline = time.monotonic() + 10
    while not all(cached(mapped, t, size) for t in steps) and time.monotonic() < deadline:
        time.sleep(0.01)
    return all(cached(mapped, t, size) for t in steps)


def recording_madvise(monkeypatch) -> list:
    """The (start, length) of every madvise made from now on (still made)."""
    asked = []
    mincore, madvise = readahead._CALLS

    def recorded(start, length, advice):
        asked.append((start, length))
        return madvise(start, length, advice)

    monkeypatch.setattr(readahead, "_CALLS", (mincore, recorded))
    return asked


@pytest.mark.parametrize("nbytes", [1, STEP, 8_131_200, PAGE, 3 * PAGE + 1])
@pytest.mark.parametrize("offset", [0, 1, 4095, 8_131_200, 7 * 8_131_200])
def test_pages_are_whole_pages_covering_the_bytes(offset, nbytes):
    start, length = pages(0x7F0000000000 + offset, nbytes)
    assert start % PAGE == 0 and length % PAGE == 0
    assert start <= 0x7F0000000000 + offset and start + length >= 0x7F0000000000 + offset + nbytes
    assert length < nbytes + 2 * PAGE  # no more than the pages the bytes touch


def test_a_cold_batch_is_read_ahead_by_the_kernel_without_being_touched(tmp_path):
    mapped = cold_steps(tmp_path / "steps")
    # runs of consecutive steps, each starting mid-page: 3-5, 11 and 20-21 (a window and its target)
    assert ReadAhead("steps")(mapped, 1, np.array([[3, 4], [11, 20]]), np.array([5, 21])) == 3
    assert wait_until_cached(mapped, [3, 4, 5, 11, 20, 21])  # the reads were started: nothing here read the bytes
    assert not cached(mapped, 350)  # and only those


def test_the_warm_probe_is_a_page_of_the_row_alone_where_it_has_one():
    # a row that is not a whole number of pages shares its first page with the row before, maybe cached
    row = 8_131_200
    for t in range(1, 6):
        page = readahead._page_within(0x7F0000000000 + t * row, row)
        assert page % PAGE == 0 and 0x7F0000000000 + t * row <= page and page + PAGE <= 0x7F0000000000 + (t + 1) * row
    assert readahead._page_within(0x7F0000000000 + 5000, 1250) == 0x7F0000000000 + 5000  # none: its first byte's


def test_of_some_channels_only_their_fields_are_asked_for(tmp_path, monkeypatch):
    # 4 channels of 1250 bytes a step; a dataset of channel 1 alone copies rows t * 4 + 1, each 1250 bytes
    mapped = cold_steps(tmp_path / "steps")
    asked = recording_madvise(monkeypatch)
    rows = np.array([40 * 4 + 1, 41 * 4 + 1, 200 * 4 + 1])
    assert ReadAhead("steps")(mapped, 4, rows) == 3  # fields of consecutive steps are not consecutive rows
    assert asked == [pages(mapped.ctypes.data + row * 1250, 1250) for row in rows]
    assert wait_until_cached(mapped, rows.tolist(), size=1250)
    assert not cached(mapped, 100 * 4 + 1, size=1250)


def test_a_run_longer_than_the_kernel_reads_at_once_is_advised_in_pieces_covering_it(tmp_path, monkeypatch):
    # one WILLNEED reads at most max(read_ahead_kb, max_sectors_kb): a longer run must be asked for piece by piece
    mapped = cold_steps(tmp_path / "steps")
    asked = recording_madvise(monkeypatch)
    monkeypatch.setattr(readahead, "_CHUNK", 4 * PAGE)
    assert ReadAhead("steps")(mapped, 1, np.arange(100, 120)) == 1  # 100 KB: one run of 25 pages, 4 a piece
    start, length = pages(mapped.ctypes.data + 100 * STEP, 20 * STEP)
    assert all(n <= 4 * PAGE for _, n in asked) and len(asked) == -(-length // (4 * PAGE))
    assert [a for a, _ in asked] == list(range(start, start + length, 4 * PAGE))
    assert sum(n for _, n in asked) == length
    assert wait_until_cached(mapped, range(100, 120))


def test_a_warm_batch_costs_one_probe_and_a_cold_pass_looks_at_every_step(tmp_path, monkeypatch):
    mapped = cold_steps(tmp_path / "steps")
    calls = {"mincore": 0, "madvise": 0}
    mincore, madvise = readahead._CALLS

    def counted(name, call):
        def wrapper(*args):
            calls[name] += 1
            return call(*args)

        return wrapper

    asked = []

    def recorded(start, length, advice):
        asked.append((start, length))
        return madvise(start, length, advice)

    monkeypatch.setattr(readahead, "_CALLS", (counted("mincore", mincore), counted("madvise", recorded)))
    read_ahead = ReadAhead("steps")
    np.asarray(mapped[0:2]).sum()  # a cold pass that has read steps 0 and 1 already: pages 0-2, step 2's first
    assert read_ahead(mapped, 1, np.array([0, 1, 300])) == 1  # the first step is cached, the last is not
    assert read_ahead.cold and calls["madvise"] == 1
    # in the same cold pass: a batch whose first step is cached, then step 2, whose first page (shared with
    # step 1) is cached and its second is not: that page is asked for, and only it
    assert read_ahead(mapped, 1, np.array([1, 330])) == 1 and calls["madvise"] == 2
    assert read_ahead(mapped, 1, np.array([2])) == 1 and asked[-1] == (mapped.ctypes.data + 3 * PAGE, PAGE)
    assert wait_until_cached(mapped, [2])
    np.asarray(mapped).sum()  # now all of it is cached
    assert read_ahead(mapped, 1, np.array([7, 9])) == 0 and not read_ahead.cold  # one last look at each step
    calls.update(mincore=0, madvise=0)
    for _ in range(5):  # warm: one probe of one page a batch, no madvise
        assert read_ahead(mapped, 1, np.array([[2, 3], [17, 18]]), np.array([4, 19])) == 0
    assert calls == {"mincore": 5, "madvise": 0}


def test_runs_split_at_shard_boundaries_and_point_into_the_right_shard(tiny_store):
    array = open_store(tiny_store).array
    assert isinstance(array, ShardedArray)
    per = array.shard_steps
    steps = np.array([per - 2, per - 1, per, per + 1, 3 * per + 1])  # a run across a boundary is two
    step_bytes = int(np.prod(array.shape[1:])) * array.dtype.itemsize
    expected = [(0, per - 2, 2), (1, 0, 2), (3, 1, 1)]  # (shard, its first step, steps)
    runs = list(readahead._runs(array, steps, 1))
    assert len(runs) == len(expected)
    for (mapped, address, nbytes), (k, local, n) in zip(runs, expected):
        assert mapped.ctypes.data == array.shard(k).ctypes.data  # the same mapping: the shard's, kept by the cache
        assert address == mapped.ctypes.data + local * step_bytes and nbytes == n * step_bytes
    channels = array.shape[1]  # the same over rows of one channel: channel 2 of those steps
    runs = list(readahead._runs(array, steps * channels + 2, channels))
    assert [r[1] for r in runs] == [
        array.shard(k).ctypes.data + (local * channels + 2) * (step_bytes // channels)
        for k, local in [(0, per - 2), (0, per - 1), (1, 0), (1, 1), (3, 1)]
    ]


def test_a_failing_call_warns_once_and_reading_goes_on_without_it(tmp_path, monkeypatch):
    mapped = cold_steps(tmp_path / "steps")
    mincore, _ = readahead._CALLS
    calls = []

    def failing(code):
        def madvise(*args):
            calls.append(args)
            ctypes.set_errno(code)
            return -1

        return madvise

    monkeypatch.setattr(readahead, "_CALLS", (mincore, failing(errno.EAGAIN)))
    assert ReadAhead("steps")(mapped, 1, np.array([3])) == 1  # a hint the kernel could not take: the copy faults
    monkeypatch.setattr(readahead, "_CALLS", (mincore, failing(errno.EPERM)))  # a sandbox that forbids it
    read_ahead = ReadAhead("/stores/era5.zarr")
    with pytest.warns(UserWarning, match=r"reading ahead in /stores/era5.zarr stopped: .*madvise failed"):
        assert read_ahead(mapped, 1, np.array([5])) == 0
    calls.clear()
    assert read_ahead(mapped, 1, np.array([7])) == 0 and not calls  # stopped: no second warning, no call
