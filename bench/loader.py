"""Loader benchmark (`make bench`): every way of feeding the same samples, side by side in one run.

    python bench/loader.py STORE [--workers 2] [--batch-size 32] [--seconds 8] [--train] [--results bench/results]

Rows, all reading the train split of STORE in the same shuffled order with the same workers and
delivering the same (x, y) tensors:
  netcdf            raw NetCDF via xarray, normalised per sample (RawSourceDataset) in a DataLoader
  store-dataloader  StoreDataset (memmap, per sample) in a standard DataLoader
  store-batch       BatchLoader: whole-batch gathers from the memmap, prefetched (pinned on CUDA)
  store-batch-1shard  the same over --one-shard, the same data as ONE shard file (format 2 layout check)
  zarr-python       per-sample reads of the same store through zarr-python in a DataLoader
  memcpy            the ceiling: a copy of the same number of bytes from the page-cached store
Each row runs in its own process (peak RSS is the process tree's, sampled every 20 ms; it counts
the store pages a memmap touches, which are page cache, so `peak_private_mb` is shown too).
Inputs are read once first so that every row reads from page cache. On a GPU (or with --train),
each loader also feeds a small UNet, next to the model alone on GPU-resident batches.
Writes loader.json (a list of rows) and loader.png into --results, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from canonstore import open_store
from canonstore.loaders import BatchLoader, RawSourceDataset, StoreDataset, seeded_generator, worker_init_fn

LOADERS = ("netcdf", "store-dataloader", "store-batch", "zarr-python", "memcpy")


class ZarrDataset(StoreDataset):
    """StoreDataset's samples, each read through zarr-python (what a plain-zarr user writes)."""

    _zarr = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_zarr", None)
        return state

    def _read_steps(self, start: int, stop: int) -> np.ndarray:
        if self._zarr is None:
            import zarr

            self._zarr = zarr.open_array(self.path / "data", mode="r")
        return self._zarr[start:stop]


class PeakRSS:
    """Peak resident memory of this process and its children, sampled in a thread."""

    def __init__(self):
        self.rss = self.private = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.wait(0.02):
            rss = private = 0
            for p in [me] + me.children(recursive=True):
                try:
                    info = p.memory_info()
                except psutil.Error:
                    continue
                rss, private = rss + info.rss, private + info.rss - info.shared
            self.rss, self.private = max(self.rss, rss), max(self.private, private)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_loader(name: str, store, args, device: str):
    """An iterable of (x, y) batches for loader `name`, all over the same train windows."""
    kwargs = {"lead": 1, "history": 0}
    if name == "store-batch":
        return BatchLoader(
            StoreDataset(store, "train", **kwargs),
            args.batch_size,
            seed=0,
            device=device,
            workers=args.workers,
            drop_last=True,
        )
    dataset = {"netcdf": RawSourceDataset, "store-dataloader": StoreDataset, "zarr-python": ZarrDataset}[name]
    return torch.utils.data.DataLoader(
        dataset(store, "train", **kwargs),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        generator=seeded_generator(0),
        worker_init_fn=worker_init_fn,
        pin_memory=device == "cuda",
        persistent_workers=args.workers > 0,
    )


def memcpy_batches(store, args):
    """Copies of batch-sized contiguous slabs of the memmap into one buffer, split over the workers."""
    from concurrent.futures import ThreadPoolExecutor

    steps = 2 * args.batch_size  # x and y: two samples' bytes per sample
    mapped = store.array
    # Slabs from the largest shard (a sharded store): the ceiling is a copy, wherever its bytes live.
    mapped = mapped if isinstance(mapped, np.ndarray) else max((mapped.shard(k) for k in range(mapped.shards)), key=len)
    if len(mapped) <= steps:
        raise SystemExit(f"memcpy needs shards of more than {steps} steps; this store has {len(mapped)}")
    array = mapped.reshape(len(mapped), -1)
    out = np.empty((steps, array.shape[1]), array.dtype)
    parts = np.array_split(np.arange(steps), args.workers)
    rng = np.random.default_rng(0)

    def copy(part, start):
        np.copyto(out[part[0] : part[-1] + 1], array[start + part[0] : start + part[-1] + 1])

    with ThreadPoolExecutor(args.workers) as pool:
        while True:
            start = int(rng.integers(0, len(array) - steps))
            list(pool.map(copy, parts, [start] * len(parts)))
            yield out[: args.batch_size], out[args.batch_size :]


def measure(name: str, args) -> dict:
    """Batches/s of one loader for about `args.seconds` (after 2 warm-up batches), in this process."""
    store = open_store(args.one_shard if name.endswith("-1shard") else args.store)
    with PeakRSS() as peak:
        batches = (
            memcpy_batches(store, args)
            if name == "memcpy"
            else make_loader(name.removesuffix("-1shard"), store, args, "cpu")
        )
        it = iter(batches)
        for _ in range(2):
            next(it)
        n, nbytes, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            try:
                x, y = next(it)
            except StopIteration:  # one epoch is shorter than the time asked for: start the next
                it = iter(batches)
                continue
            n, nbytes = n + 1, nbytes + x.nbytes + y.nbytes
        elapsed = time.perf_counter() - start
    return {
        "loader": name,
        "mode": "load",
        "workers": args.workers,
        "batch_size": args.batch_size,
        "batches": n,
        "seconds": round(elapsed, 2),
        "samples_per_s": round(n * args.batch_size / elapsed, 1),
        "mb_per_s": round(nbytes / elapsed / 1e6, 1),
        "peak_rss_mb": round(peak.rss / 1e6, 1),
        "peak_private_mb": round(peak.private / 1e6, 1),
    }


def train(name: str, args) -> dict:
    """Training steps/s of a small UNet fed by loader `name` ("model-alone": one GPU-resident batch)."""
    from canonstore.training import UNet

    store = open_store(args.store)
    dataset = StoreDataset(store, "train", lead=1)
    x0, y0 = dataset[0]
    torch.manual_seed(0)
    model = UNet(x0.shape[0], y0.shape[0], width=args.width, periodic=store.longitude_periodic).cuda()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.backends.cudnn.benchmark = True
    if name == "model-alone":
        xb, yb = (torch.stack([t] * args.batch_size).cuda() for t in (x0, y0))
        batches = iter(lambda: (xb, yb), None)
    else:
        loader = make_loader(name, store, args, "cuda")
        batches = (b for _ in range(10**6) for b in loader)

    def step(x, y):
        x = x.to("cuda", non_blocking=True).to(memory_format=torch.channels_last)
        y = y.to("cuda", non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        step(*next(batches))
    torch.cuda.synchronize()
    n, wait, start, marks = 0, 0.0, time.perf_counter(), []
    while time.perf_counter() - start < args.seconds:
        t0 = time.perf_counter()
        x, y = next(batches)
        wait += time.perf_counter() - t0
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step(x, y)
        end.record()
        marks.append((begin, end))
        n += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    gpu_ms = sum(b.elapsed_time(e) for b, e in marks) / n  # main-stream time per step (GPU busy or waiting)
    return {
        "loader": name,
        "mode": "train",
        "workers": args.workers,
        "batch_size": args.batch_size,
        "steps": n,
        "seconds": round(elapsed, 2),
        "steps_per_s": round(n / elapsed, 2),
        "samples_per_s": round(n * args.batch_size / elapsed, 1),
        "data_wait_frac": round(wait / elapsed, 3),
        "gpu_ms_per_step": round(gpu_ms, 2),
        "gpu": torch.cuda.get_device_name(),
    }


def warm_page_cache(store) -> None:
    """Read every input once so that all rows read from memory, not disk."""
    files = [p for p in store.path.rglob("*") if p.is_file()]
    files += [Path(i["path"]) for i in store.attrs["inputs"]]
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def add_ratios(rows: list[dict]) -> None:
    loads = {r["loader"]: r for r in rows if r["mode"] == "load"}
    for r in rows:
        if r["mode"] == "load":
            r["x_netcdf"] = round(r["samples_per_s"] / loads["netcdf"]["samples_per_s"], 2)
            r["of_memcpy"] = round(r["mb_per_s"] / loads["memcpy"]["mb_per_s"], 3)
        else:
            alone = next(t for t in rows if t["loader"] == "model-alone")
            r["of_model_alone"] = round(r["steps_per_s"] / alone["steps_per_s"], 3)


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'loader':<18}{'samples/s':>11}{'MB/s':>10}{'x netcdf':>10}{'of memcpy':>11}{'peak RSS MB':>13}"
        f"{'private MB':>12}"
    )
    for r in (r for r in rows if r["mode"] == "load"):
        print(
            f"{r['loader']:<18}{r['samples_per_s']:>11.1f}{r['mb_per_s']:>10.1f}{r['x_netcdf']:>10.2f}"
            f"{r['of_memcpy']:>11.1%}{r['peak_rss_mb']:>13.1f}{r['peak_private_mb']:>12.1f}"
        )
    trains = [r for r in rows if r["mode"] == "train"]
    if trains:
        print(f"\n{'training with':<18}{'steps/s':>9}{'samples/s':>11}{'of model alone':>16}{'data wait':>11}")
        for r in trains:
            print(
                f"{r['loader']:<18}{r['steps_per_s']:>9.2f}{r['samples_per_s']:>11.1f}{r['of_model_alone']:>16.1%}"
                f"{r['data_wait_frac']:>11.1%}"
            )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("load", "samples_per_s", "loader samples/s (log)")]
    if any(r["mode"] == "train" for r in rows):
        groups.append(("train", "samples_per_s", "training samples/s"))
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.5), squeeze=False)
    for ax, (mode, key, title) in zip(axes[0], groups):
        mine = [r for r in rows if r["mode"] == mode]
        ax.barh([r["loader"] for r in mine], [r[key] for r in mine], color="tab:blue")
        ax.set_title(title)
        if mode == "load":
            ax.set_xscale("log")
        ax.invert_yaxis()
    fig.suptitle(f"{rows[0]['store']}: batch {rows[0]['batch_size']}, {rows[0]['workers']} workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--width", type=int, default=32, help="UNet width for --train")
    parser.add_argument(
        "--train",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time UNet training on CUDA (default: when a GPU is visible)",
    )
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--one-shard", type=Path, help="the same store built as one shard: adds store-batch-1shard")
    parser.add_argument("--only", help="comma-separated rows to run, e.g. train:store-batch (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one row, print JSON
    args = parser.parse_args()
    if args.one:
        mode, name = args.one.split(":")
        print(json.dumps(measure(name, args) if mode == "load" else train(name, args)))
        return

    store = open_store(args.store)
    warm_page_cache(store)
    jobs = [("load", name) for name in LOADERS]
    if args.one_shard:
        jobs.insert(LOADERS.index("store-batch") + 1, ("load", "store-batch-1shard"))
    if args.train or (args.train is None and torch.cuda.is_available()):
        jobs += [("train", name) for name in ("model-alone", "store-batch", "store-dataloader", "netcdf")]
    if args.only:
        jobs = [job for job in jobs if ":".join(job) in args.only.split(",")]
    rows = []
    for mode, name in jobs:
        cmd = [
            sys.executable,
            __file__,
            str(args.store),
            "--one",
            f"{mode}:{name}",
            "--workers",
            str(args.workers),
            "--batch-size",
            str(args.batch_size),
            "--seconds",
            str(args.seconds),
            "--width",
            str(args.width),
        ]
        cmd += ["--one-shard", str(args.one_shard)] if args.one_shard else []
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode:
            sys.exit(f"{mode} {name} failed:\n{done.stderr}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["store"] = str(args.store)
        rows.append(row)
        print(f"  {mode:<6}{name:<18}{row['samples_per_s']:>10.1f} samples/s", flush=True)
    if args.only:
        print(json.dumps(rows))
        return
    add_ratios(rows)
    print_table(rows)
    if args.one_shard:
        loads = {r["loader"]: r for r in rows if r["mode"] == "load"}
        shards = store.attrs["layout"].get("shards", 1)
        print(
            f"\nstore-batch over {shards} shards / over one shard: "
            f"{loads['store-batch']['samples_per_s'] / loads['store-batch-1shard']['samples_per_s']:.3f}"
        )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "loader.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.results / "loader.png")
    print(f"\nwrote {args.results / 'loader.json'} and {args.results / 'loader.png'}")


if __name__ == "__main__":
    main()
