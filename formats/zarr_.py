"""The `data` array's on-disk layout: Zarr v3 shards along time, written and memory-mapped directly.

Shard k of an uncompressed store holds steps [k*S, (k+1)*S) in one file, `data/c/k/0/0...`. Per
the Zarr v3 sharding spec (index_location "end") the file is the samples in C order, then an index
of S (offset, nbytes) uint64 little-endian pairs, then the crc32c of the index; steps past the end
of the array (a partial last shard) are marked missing, 2**64-1. We write samples at their final
offsets and the index last, so each file is plain bytes that `np.memmap` maps as a
(steps, channel, *space) array and zarr-python reads as usual.
https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
import zarr.codecs

from canonstore.atomic import start_writeback
from canonstore.buffers import page_aligned_empty
from canonstore.formats.handle import StoreHandle

MISSING = np.uint64(2**64 - 1)  # index entry of a chunk that was never written


@dataclass(frozen=True)
class ShardLayout:
    """How `data`'s `steps` fall into shard files: shard k holds steps [k * shard_steps, (k + 1) * shard_steps),
    the last shard the steps that remain.

    >>> layout = ShardLayout(steps=10, shard_steps=4)
    >>> layout.count, layout.range(2), layout.steps_in(2), layout.locate(9)
    (3, (8, 10), 2, (2, 1))
    """

    steps: int
    shard_steps: int

    @classmethod
    def of_size(cls, steps: int, sample_bytes: int, shard_mb: float) -> ShardLayout:
        """Shards of as many whole samples as fit in `shard_mb` MiB (at least one); a store smaller than one
        shard is one shard of exactly its steps (no index of absent chunks)."""
        return cls(steps, min(max(1, int(shard_mb * 2**20) // sample_bytes), steps))

    @property
    def count(self) -> int:
        """The number of shard files."""
        return -(-self.steps // self.shard_steps)

    def range(self, k: int) -> tuple[int, int]:
        """(first, stop): shard `k` holds steps [first, stop)."""
        first = k * self.shard_steps
        return first, min(self.steps, first + self.shard_steps)

    def steps_in(self, k: int) -> int:
        """How many steps shard `k` holds (the last shard may hold fewer than `shard_steps`)."""
        first, stop = self.range(k)
        return stop - first

    def shard_of(self, step):
        """The shard holding `step` (an int or an integer array)."""
        return step // self.shard_steps

    def locate(self, step: int) -> tuple[int, int]:
        """(shard, position in it) of `step`."""
        return divmod(step, self.shard_steps)

    def shards_from(self, step: int) -> range:
        """The shards holding `step` and the steps after it."""
        return range(self.shard_of(step), self.count)


def create_data_array(
    group: zarr.Group,
    shape: tuple[int, ...],
    dtype: str,
    dims: tuple[str, ...],
    compression: str,
    shard_steps: int,
    attributes: dict,
) -> zarr.Array:
    """Create `data`'s metadata: shards of `shard_steps` along time, inner chunk one sample."""
    sample = tuple(shape[1:])
    compressors = None
    if compression != "none":
        compressors = (
            zarr.codecs.ZstdCodec(level=3)
            if compression == "zstd"
            else zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
        )
    return group.create_array(
        "data",
        shape=shape,
        dtype=dtype,
        chunks=(1,) + sample,
        shards=(min(shard_steps, shape[0]),) + sample,
        compressors=compressors,
        fill_value=np.nan,
        dimension_names=dims,
        attributes=attributes,
        config={"write_empty_chunks": True},
    )  # a skipped chunk would break the contiguous layout


def shard_file(store: Path, ndim: int, k: int = 0) -> Path:
    """Path of shard `k` of `data` (default chunk key encoding: `data/c/k/0/0...`)."""
    return Path(store, "data", "c", str(k), *(["0"] * (ndim - 1)))


class ShardWriter:
    """Write an uncompressed `data` array shard by shard: samples at their offsets, then each index.

    Plain positioned writes, not a memmap, so the pages written do not count towards the build's
    memory. One shard file is open at a time, so a store of 100,000 shards needs one descriptor.
    """

    def __init__(self, store: Path, shape: tuple[int, ...], dtype: np.dtype, shard_steps: int, resume: bool = False):
        self.store, self.shape, self.shard_steps = Path(store), tuple(shape), shard_steps
        self.layout = ShardLayout(self.shape[0], shard_steps)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.sample_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize
        self.field_bytes = self.sample_bytes // shape[1]
        self.resume = resume  # resuming keeps what is written; offsets are fixed, so writing goes on in place
        self._k, self._fd = None, None

    def _open(self, k: int) -> int:
        if self._k != k:
            self.close()
            path = shard_file(self.store, len(self.shape), k)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if self.resume else os.O_TRUNC), 0o644)
            self._k = k
        return self._fd

    def write(self, start: int, block: np.ndarray, channel: int = 0, writeback: bool = False) -> None:
        """Write steps [start, start + len(block)) of one shard; a block of one step may hold only
        the channels from `channel` on (a step larger than the build's block is written in parts).
        `writeback`: start writing it to the disk now (`start_writeback`), so that the shard's fsync is short."""
        k, local = self.layout.locate(start)
        if local + len(block) > self.layout.steps_in(k):
            raise ValueError(f"steps {start}..{start + len(block) - 1} cross the end of shard {k}")
        if block.shape[1] != self.shape[1] and len(block) != 1:
            raise ValueError("a block with part of the channels must hold one step")
        view = memoryview(np.ascontiguousarray(block, dtype=self.dtype)).cast("B")
        fd, offset, done = self._open(k), local * self.sample_bytes + channel * self.field_bytes, 0
        while done < len(view):  # os.pwrite may write less than asked
            done += os.pwrite(fd, view[done:], offset + done)
        if writeback:
            start_writeback(fd, offset, len(view))

    def read(self, start: int, steps: int, channel: int = 0, channels: int | None = None) -> np.ndarray:
        """Read back steps [start, start + steps) of channels [channel, channel + channels) (all when None)
        as written, for normalising a shard in place; like `write`, a part of the channels is one step."""
        k, local = self.layout.locate(start)
        channels = self.shape[1] - channel if channels is None else channels
        out = page_aligned_empty((steps, channels) + self.shape[2:], self.dtype)  # a pread at full speed
        view = memoryview(out).cast("B")
        fd, offset, done = self._open(k), local * self.sample_bytes + channel * self.field_bytes, 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise ValueError(f"{shard_file(self.store, len(self.shape), k)}: shorter than its steps")
            done += got
        return out

    def sync(self) -> None:
        """Flush the open shard to disk: `progress.json` may only say what has reached the disk."""
        if self._fd is not None:
            os.fdatasync(self._fd)

    def finish_shard(self, k: int) -> bytes:
        """Append shard `k`'s index and checksum, sync the file and return the index bytes; after this
        zarr-python can read its steps."""
        fd, n = self._open(k), self.layout.steps_in(k)
        index = shard_index(n, self.shard_steps, self.sample_bytes)
        os.pwrite(fd, index, n * self.sample_bytes)
        os.ftruncate(fd, n * self.sample_bytes + len(index))
        os.fsync(fd)
        self.close()
        return index

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._k, self._fd = None, None


def shard_index(steps: int, shard_steps: int, sample_bytes: int) -> bytes:
    """The index bytes (with crc32c) of a shard whose first `steps` of `shard_steps` chunks are present."""
    entries = np.full((shard_steps, 2), MISSING, dtype="<u8")
    entries[:steps, 0] = np.arange(steps, dtype="<u8") * np.uint64(sample_bytes)
    entries[:steps, 1] = sample_bytes
    index = entries.tobytes()
    return index + google_crc32c.value(index).to_bytes(4, "little")


def read_shard_index(path: Path, shard_steps: int) -> np.ndarray:
    """(shard_steps, 2) array of (offset, nbytes) from the end of a shard; checks the crc32c."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _index_of(fd, shard_steps, path)
    finally:
        os.close(fd)


def _index_of(fd: int, shard_steps: int, path: Path) -> np.ndarray:
    size = 16 * shard_steps
    end = os.fstat(fd).st_size
    if end < size + 4:
        raise ValueError(f"{path}: shorter than its shard index (file damaged or not written to the end)")
    raw = os.pread(fd, size + 4, end - size - 4)
    index, crc = raw[:size], int.from_bytes(raw[size:], "little")
    if google_crc32c.value(index) != crc:
        raise ValueError(f"{path}: shard index checksum mismatch (file damaged or not written to the end)")
    return np.frombuffer(index, dtype="<u8").reshape(shard_steps, 2)


def mappable_layout(store: Path, array: zarr.Array) -> int:
    """Steps per shard of an uncompressed `data` array in the layout this module writes.

    Raises ValueError when `data` is compressed or not sharded only along time.
    """
    shape, codecs = tuple(array.shape), array.metadata.codecs
    if (
        len(codecs) != 1
        or type(codecs[0]).__name__ != "ShardingCodec"
        or tuple(array.shards[1:]) != shape[1:]
        or tuple(array.chunks) != (1,) + shape[1:]
        or any(type(c).__name__ != "BytesCodec" for c in codecs[0].codecs)
    ):
        raise ValueError(f"{store}: `data` is not uncompressed shards along time; it cannot be memory-mapped")
    return int(array.shards[0])


def open_shard(store: StoreHandle, shape: tuple[int, ...], dtype: np.dtype, shard_steps: int, k: int) -> int:
    """A descriptor of shard `k` of the opened store (see `formats.handle`), after checking that its index
    says it holds its steps as contiguous C-order samples; the caller closes it."""
    rel = shard_file(Path(), len(shape), k).as_posix()
    n = ShardLayout(shape[0], shard_steps).steps_in(k)
    sample_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    expected = np.frombuffer(shard_index(n, shard_steps, sample_bytes)[:-4], dtype="<u8").reshape(shard_steps, 2)
    fd = store.open_file(rel)
    try:
        if not np.array_equal(_index_of(fd, shard_steps, store.path / rel), expected):
            raise ValueError(
                f"{store.path / rel}: shard is not {n} contiguous samples in C order (missing or moved chunks)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_shard(
    store: Path | StoreHandle, shape: tuple[int, ...], dtype: np.dtype, shard_steps: int, k: int
) -> np.memmap:
    """Shard `k` as a read-only (steps, channel, *space) memmap, after checking its index says so; from the
    store `store` opened (a StoreHandle), or raises StoreError once that store has been rebuilt."""
    store = store if isinstance(store, StoreHandle) else StoreHandle(store)
    dtype = np.dtype(dtype).newbyteorder("<")
    n = ShardLayout(shape[0], shard_steps).steps_in(k)
    with open(open_shard(store, shape, dtype, shard_steps, k), "rb") as f:  # the mapping outlives the file
        mapped = np.memmap(f, dtype=dtype, mode="r", shape=(n,) + tuple(shape[1:]), offset=0)
    store.check()
    return mapped
