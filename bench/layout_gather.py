"""The layout choice behind `data`: one shard file (one memmap) versus several shard files.

    python bench/layout_gather.py [--store data/intermediate/demo.zarr] [--batch 32] [--batches 200]

Copies the store's data into a multi-shard uncompressed Zarr array (shards of --shard-mb), then
times, side by side, random sorted batches gathered (a) with one np.take from the single memmap,
(b) shard by shard from per-shard memmaps, (c) through zarr-python from each layout. The memcpy ceiling
belongs to `make bench` (loaders). Everything is read from page cache (each variant is warmed first).
Prints MB/s per variant.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import zarr

from canonstore import open_store
from canonstore.formats.zarr_ import ShardLayout


def multi_shard_copy(store, path: Path, shard_mb: float) -> tuple[zarr.Array, list[np.memmap], ShardLayout]:
    sample_bytes = int(np.prod(store.shape[1:])) * store.dtype.itemsize
    layout = ShardLayout.of_size(store.shape[0], sample_bytes, shard_mb)
    arr = zarr.create_array(
        path,
        shape=store.shape,
        dtype=store.dtype,
        chunks=(1,) + store.shape[1:],
        shards=(layout.shard_steps,) + store.shape[1:],
        compressors=None,
        fill_value=np.nan,
        config={"write_empty_chunks": True},
        overwrite=True,
    )
    maps = []
    for k in range(layout.count):
        first, stop = layout.range(k)
        arr[first:stop] = store.array[first:stop]
        n = stop - first
        key = path.joinpath("c", str(k), *(["0"] * (len(store.shape) - 1)))
        maps.append(np.memmap(key, dtype=store.dtype, mode="r", shape=(n,) + store.shape[1:]))
    return arr, maps, layout


def gather_shards(maps, layout: ShardLayout, idx, out):
    shard = layout.shard_of(idx)
    for k in np.unique(shard):
        sel = np.flatnonzero(shard == k)
        out[sel] = maps[k][idx[sel] - layout.range(k)[0]]


def timed(fn, batches, nbytes):
    fn(batches[0])  # warm
    began = time.perf_counter()
    for b in batches:
        fn(b)
    return len(batches) * nbytes / (time.perf_counter() - began) / 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="data/intermediate/demo.zarr")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--shard-mb", type=float, default=64)
    p.add_argument("--work", type=Path, default=Path("/tmp/canonstore-layout.zarr"))
    args = p.parse_args()
    store = open_store(args.store)
    single = zarr.open_array(Path(args.store) / "data", mode="r")
    multi, maps, layout = multi_shard_copy(store, args.work, args.shard_mb)
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(store.shape[0], args.batch, replace=False)) for _ in range(args.batches)]
    out = np.empty((args.batch,) + store.shape[1:], store.dtype)
    nbytes = out.nbytes
    for a in (store.array, *maps):  # page cache
        np.asarray(a).sum()
    rows = {
        "single memmap, one np.take": timed(lambda b: np.take(store.array, b, axis=0, out=out), batches, nbytes),
        f"{len(maps)} shard memmaps, take per shard": timed(
            lambda b: gather_shards(maps, layout, b, out), batches, nbytes
        ),
        "zarr-python, single shard": timed(lambda b: single.get_orthogonal_selection((b,)), batches[:40], nbytes),
        f"zarr-python, {len(maps)} shards": timed(lambda b: multi.get_orthogonal_selection((b,)), batches[:40], nbytes),
    }
    print(f"store {args.store} {store.shape}, batch {args.batch} ({nbytes / 1e6:.1f} MB), random sorted indices")
    for name, mbs in rows.items():
        print(f"  {name:<40}{mbs:>10.0f} MB/s")


if __name__ == "__main__":
    main()
