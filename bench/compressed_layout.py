"""Would compressed shards win cold without losing warm? (issue 28: anemoi's lz4 store is smaller on disk)

    python bench/compressed_layout.py STORE [--codecs blosc-lz4 blosc-zstd1 lz4] [--workers 2] [--batch-size 8]
                                           [--repeat 3] [--seconds 4] [--work DIR]

Each codec compresses every step of the store's data on its own (one frame per step, as a chunk of one step
would be) into one file, with the frames' offsets, in a folder of its own made under --work and removed after.
Then, rows interleaved (A B C, C B A, ...) for --repeat rounds, each in a process of its own, cold (its files
evicted from the page cache, one epoch) and warm (in the page cache, for --seconds after one warm-up batch):

  uncompressed  the store's memmap: each sample's x (step t) and y (step t + 1) copied into a reused buffer
                (bench/loader.py's memcpy-samples: the least the uncompressed layout's loader can do)
  <codec>       each sample's two frames read with os.pread and decoded straight into the same buffers

Both take the sampler's positions (train split, lead 1), in `--workers` threads, each filling whole batches
into its own buffers; numcodecs decodes without the GIL. No zarr, no index lookups, no copy after the decode;
but each thread reads a frame and then decodes it, in turn, so with few threads a cold row adds the two times
(more --workers overlap one thread's reads with another's decoding). Prints size on disk, samples/s (median,
spread) and each row's ratio to the uncompressed row, cold and warm; writes bench/results/compressed-layout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np
from pagecache import evict, files_of, read_all
from sample_batches import batches_of, sampler_batches, uncompressed

from canonstore import open_store
from canonstore.atomic import mark, remove_tree

CODECS = {
    "blosc-lz4": lambda: numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
    "blosc-zstd1": lambda: numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE),
    "lz4": lambda: numcodecs.LZ4(),
}


def compress(store, codec_name: str, work: Path) -> tuple[Path, np.ndarray]:
    """One file of every step's frame, in step order, and the frames' offsets (len(steps) + 1)."""
    codec, path = CODECS[codec_name](), work / f"{codec_name}.frames"
    offsets = [0]
    with open(path, "wb") as f:
        for t in range(store.shape[0]):
            frame = codec.encode(np.ascontiguousarray(store.array[t]))
            f.write(frame)
            offsets.append(offsets[-1] + len(frame))
        os.fsync(f.fileno())
    return path, np.asarray(offsets)


def preads(store, path: Path):
    """The uncompressed shard files read with os.preadv straight into the buffer: no mapping, no page faults."""
    layout = store.attrs["layout"]
    steps = layout.get("shard_steps") or store.shape[0]
    step_bytes = int(np.prod(store.shape[1:])) * store.dtype.itemsize
    fds = [os.open(path / layout["data_files"].format(k=k), os.O_RDONLY) for k in range(layout.get("shards", 1))]

    def fill():
        def read(out, t):
            os.preadv(fds[t // steps], [out.reshape(-1).view(np.uint8)], (t % steps) * step_bytes)

        return read

    return fill


def decoded(path: Path, offsets: np.ndarray, codec_name: str):
    fd, largest = os.open(path, os.O_RDONLY), int(np.diff(offsets).max())

    def fill():
        codec, buf = CODECS[codec_name](), bytearray(largest)
        view = memoryview(buf)

        def read(out, t):
            n = os.preadv(fd, [view[: offsets[t + 1] - offsets[t]]], int(offsets[t]))
            codec.decode(view[:n], out=out)

        return read

    return fill


def measure(fill, files, store, batches, args, cold: bool) -> float:
    """samples/s: one whole epoch from an evicted page cache, or --seconds of warm epochs."""
    if cold:
        evict(files)
    else:  # every page in the cache, whatever a cold row before left out
        read_all(files)
    it = batches_of(fill, batches, args.workers, args.batch_size, store.shape[1:], store.dtype, 1 if cold else None)
    if not cold:
        next(it)
    n, start = 0, time.perf_counter()
    for _ in it:
        n += 1
        if not cold and time.perf_counter() - start > args.seconds:
            break
    elapsed = time.perf_counter() - start
    it.close()
    return n * args.batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--work", type=Path, help="where its own folder goes (default: beside the store, on its disk: not a tmpfs)"
    )
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--frames", type=Path, help=argparse.SUPPRESS)  # internal: the folder of frames
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one row, print samples/s
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return
    if args.frames:
        prepare(open_store(args.store), args)
        return
    work = Path(tempfile.mkdtemp(prefix="canonstore-compressed-", dir=args.work or args.store.resolve().parent))
    mark(work, "bench-compressed")  # new, and marked: remove_tree deletes only a folder canonstore made
    try:
        table = run(args, work)
    finally:
        remove_tree(work)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "compressed-layout.json").write_text(json.dumps(table, indent=1) + "\n")
    print(f"\nwrote {args.results / 'compressed-layout.json'}")


def prepare(store, args) -> None:
    """The frames of each codec, checked to decode to the store's bytes, and the sampler's batches."""
    for name in args.codecs:
        began = time.perf_counter()
        path, offsets = compress(store, name, args.frames)
        np.save(args.frames / f"{name}.offsets.npy", offsets)
        out, read = np.empty(store.shape[1:], store.dtype), decoded(path, offsets, name)()
        for t in (0, store.shape[0] - 1):
            read(out, t)
            if out.tobytes() != store.array[t].tobytes():
                raise SystemExit(f"{name}: step {t} does not decode to the store's bytes")
        print(f"{name}: compressed in {time.perf_counter() - began:.1f} s", flush=True)
    out, read = np.empty(store.shape[1:], store.dtype), preads(store, args.store)()
    for t in (0, store.shape[0] - 1):
        read(out, t)
        if out.tobytes() != store.array[t].tobytes():
            raise SystemExit(f"pread: step {t} is not the store's step {t}")
    np.save(args.frames / "batches.npy", np.stack(sampler_batches(store, args.batch_size)))


def measure_one(args) -> float:
    """One row in this process: its memmap is its own, so evicting its files empties the cache (a mapping
    that outlives a row would keep its pages cached: fadvise cannot drop mapped pages)."""
    name, mode = args.one.split(":")
    store, batches = open_store(args.store), list(np.load(args.frames / "batches.npy"))
    if name == "uncompressed":
        fill, files = uncompressed(store), files_of(args.store / "data")
    elif name == "pread":
        fill, files = preads(store, args.store), files_of(args.store / "data")
    else:
        path = args.frames / f"{name}.frames"
        fill, files = decoded(path, np.load(args.frames / f"{name}.offsets.npy"), name), [path]
    return measure(fill, files, store, batches, args, mode == "cold")


def run(args, work: Path) -> list[dict]:
    common = [str(args.store), "--frames", str(work), "--batch-size", str(args.batch_size)]
    subprocess.run([sys.executable, __file__, *common, "--codecs", *args.codecs], check=True, timeout=3600)
    os.sync()  # the frames just written reach the disk before round 0, not during its first cold row
    time.sleep(2)
    sizes = {"uncompressed": sum(f.stat().st_size for f in files_of(args.store / "data"))}
    sizes["pread"] = sizes["uncompressed"]
    sizes |= {name: (work / f"{name}.frames").stat().st_size for name in args.codecs}
    common += ["--workers", str(args.workers), "--seconds", str(args.seconds)]
    runs = {(name, cold): [] for name in sizes for cold in (True, False)}
    for round_ in range(args.repeat):
        order = list(runs) if round_ % 2 == 0 else list(runs)[::-1]  # A B C, C B A: drifts hit every row alike
        for name, cold in order:
            mode = "cold" if cold else "warm"
            done = subprocess.run(
                [sys.executable, __file__, *common, "--one", f"{name}:{mode}"],
                capture_output=True,
                text=True,
                timeout=max(600, 20 * args.seconds),
            )
            if done.returncode:
                sys.exit(f"{name} {mode} failed:\n{done.stderr}")
            runs[(name, cold)].append(json.loads(done.stdout))
            print(f"  {name:<14}{mode:<6}{runs[(name, cold)][-1]:>10.1f} samples/s", flush=True)
    store = open_store(args.store)  # its metadata: this process maps no data, so the rows' evictions work
    sample_mb = np.prod(store.shape[1:]) * store.dtype.itemsize / 1e6
    table = []
    for (name, cold), values in runs.items():
        base = runs[("uncompressed", cold)]
        ratios = [a / b for a, b in zip(values, base)]  # within each round, side by side
        table.append(
            {
                "layout": name,
                "cold": cold,
                "of_size": round(sizes[name] / sizes["uncompressed"], 3),
                "samples_per_s": round(float(np.median(values)), 1),
                "spread": [round(min(values), 1), round(max(values), 1)],
                "of_uncompressed": round(float(np.median(ratios)), 3),
                "rounds": [round(v, 1) for v in values],
                "store": str(args.store),
                "sample_mb": round(float(sample_mb), 3),
                "workers": args.workers,
                "batch_size": args.batch_size,
            }
        )
    print(f"\n{'layout':<14}{'':<6}{'of size':>8}{'samples/s':>11}{'spread':>18}{'of uncompressed':>17}")
    for r in table:
        spread = f"{r['spread'][0]:.0f}-{r['spread'][1]:.0f}"
        print(
            f"{r['layout']:<14}{'cold' if r['cold'] else 'warm':<6}{r['of_size']:>8.3f}{r['samples_per_s']:>11.1f}"
            f"{spread:>18}{r['of_uncompressed']:>17.3f}"
        )
    return table


if __name__ == "__main__":
    main()
