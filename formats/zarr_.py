"""The `data` array's on-disk layout: Zarr v3 sharding, written and memory-mapped directly.

Uncompressed stores hold `data` as ONE shard (one file) whose inner chunks are single
samples. Per the Zarr v3 sharding spec (index_location "end") the file is the samples in
C order, then an index of (offset, nbytes) uint64 little-endian pairs, then the crc32c
of the index. We write samples block by block at their final offsets and the index last,
so the file is plain bytes that `np.memmap` maps as one (time, channel, *space) array and
zarr-python reads as usual. https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/
"""

from __future__ import annotations

import os
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
import zarr.codecs

MISSING = np.uint64(2**64 - 1)  # index entry of a chunk that was never written


def create_data_array(group: zarr.Group, shape: tuple[int, ...], dtype: str, dims: tuple[str, ...],
                      compression: str, shard_steps: int, attributes: dict) -> zarr.Array:
    """Create `data`'s metadata; uncompressed: one shard over all steps, else shards of `shard_steps`."""
    sample = tuple(shape[1:])
    if compression == "none":
        shards, compressors = tuple(shape), None
    else:
        shards = (min(shard_steps, shape[0]),) + sample
        compressors = (zarr.codecs.ZstdCodec(level=3) if compression == "zstd"
                       else zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"))
    return group.create_array(
        "data", shape=shape, dtype=dtype, chunks=(1,) + sample, shards=shards, compressors=compressors,
        fill_value=np.nan, dimension_names=dims, attributes=attributes,
        config={"write_empty_chunks": True})  # a skipped chunk would break the contiguous layout


def shard_file(store: Path, ndim: int) -> Path:
    """Path of the single shard of an uncompressed `data` array (default chunk key encoding)."""
    return Path(store, "data", "c", *(["0"] * ndim))


class ShardWriter:
    """Write an uncompressed single-shard `data` array block by block, then its index.

    Plain positioned writes, not a memmap, so the pages written do not count towards the
    build's memory.
    """

    def __init__(self, store: Path, shape: tuple[int, ...], dtype: np.dtype, resume: bool = False):
        self.path = shard_file(store, len(shape))
        self.steps = shape[0]
        self.sample_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Resuming keeps the samples already written; offsets are fixed, so writing goes on in place.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | (0 if resume else os.O_TRUNC), 0o644)

    def write(self, start: int, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype)
        view = memoryview(data).cast("B")
        offset, done = start * self.sample_bytes, 0
        while done < len(view):  # os.pwrite may write less than asked
            done += os.pwrite(self._fd, view[done:], offset + done)

    def finish(self) -> None:
        """Append the shard index and its checksum; after this zarr-python can read the array."""
        offsets = np.arange(self.steps, dtype="<u8") * np.uint64(self.sample_bytes)
        index = np.stack([offsets, np.full(self.steps, self.sample_bytes, dtype="<u8")], axis=1).tobytes()
        crc = google_crc32c.value(index).to_bytes(4, "little")
        os.pwrite(self._fd, index + crc, self.steps * self.sample_bytes)
        os.ftruncate(self._fd, self.steps * self.sample_bytes + len(index) + 4)
        os.fsync(self._fd)
        os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)


def read_shard_index(path: Path, steps: int) -> np.ndarray:
    """(steps, 2) array of (offset, nbytes) from the end of a shard; checks the crc32c."""
    size = 16 * steps
    with open(path, "rb") as f:
        f.seek(-(size + 4), os.SEEK_END)
        raw = f.read(size + 4)
    index, crc = raw[:size], int.from_bytes(raw[size:], "little")
    if len(raw) != size + 4 or google_crc32c.value(index) != crc:
        raise ValueError(f"{path}: shard index checksum mismatch (file damaged or not written to the end)")
    return np.frombuffer(index, dtype="<u8").reshape(steps, 2)


def memmap_data(store: Path, array: zarr.Array) -> np.memmap:
    """Map an uncompressed single-shard `data` array as one read-only np.memmap (zero copy).

    Raises ValueError when the layout is not the contiguous one this module writes.
    """
    shape, dtype = tuple(array.shape), np.dtype(array.dtype).newbyteorder("<")
    codecs = array.metadata.codecs
    if (len(codecs) != 1 or type(codecs[0]).__name__ != "ShardingCodec" or tuple(array.shards) != shape
            or any(type(c).__name__ != "BytesCodec" for c in codecs[0].codecs)):
        raise ValueError(f"{store}: `data` is not one uncompressed shard; it cannot be memory-mapped")
    path = shard_file(store, len(shape))
    sample_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    index = read_shard_index(path, shape[0])
    expected = np.arange(shape[0], dtype=np.uint64) * np.uint64(sample_bytes)
    if not (np.array_equal(index[:, 0], expected) and np.all(index[:, 1] == sample_bytes)):
        raise ValueError(f"{store}: `data` shard is not contiguous in C order (missing or moved chunks)")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=0)
