"""Loader benchmark (`make bench`): every way of feeding the same samples, side by side in one run.

    python bench/loader.py STORE [--workers 2] [--batch-size 32] [--seconds 8] [--repeat 3] [--cold] [--train]
        [--results bench/results]

Rows, all reading the train split of STORE in the same shuffled order with the same workers and
delivering the same (x, y) tensors:
  netcdf            raw NetCDF via xarray, normalised per sample (RawSourceDataset) in a DataLoader
  store-dataloader  StoreDataset (memmap, per sample) in a standard DataLoader
  store-batch       BatchLoader: whole-batch gathers from the memmap, prefetched (pinned on CUDA)
  store-batch-1shard  the same over --one-shard, the same data as ONE shard file (format 2 layout check)
  zarr-python       per-sample reads of the same store through zarr-python in a DataLoader
  memcpy-samples    the loader's own ceiling: the same samples' bytes copied in sample-sized pieces from the same
                    random positions (same order, same threads) into a reused buffer, with nothing else done
  memcpy            the bandwidth ceiling: a copy of the same number of bytes in contiguous batch-sized slabs
With --repeat N every row runs N times, rounds interleaved (A B C, C B A, ...); a row reports its median
and spread, and its ratios to the ceilings are the median of the ratios within each round. With --cold, the
store rows and memcpy-samples read one epoch from an evicted page cache, next to two rows of the disk's limits:
read-seq (every shard file read start to end through the page cache) and read-direct (the same past it,
O_DIRECT).
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
from pagecache import evict, read_all

from canonstore import open_store
from canonstore.buffers import page_aligned_empty

LOADERS = ("netcdf", "store-dataloader", "store-batch", "zarr-python", "memcpy-samples", "memcpy")
COLD = ("store-batch", "memcpy-samples", "read-seq", "read-direct")  # --cold: the rows whose reads reach the disk


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
    import torch  # here, not at the top: the memcpy and read-* rows' processes start without it (3 s each)
    from zarr_dataset import ZarrDataset

    from canonstore.loaders import BatchLoader, RawSourceDataset, StoreDataset, seeded_generator, worker_init_fn

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
    out = page_aligned_empty((steps, array.shape[1]), array.dtype)  # as the loader's and memcpy-samples' buffers
    parts = np.array_split(np.arange(steps), args.workers)
    rng = np.random.default_rng(0)

    def copy(part, start):
        np.copyto(out[part[0] : part[-1] + 1], array[start + part[0] : start + part[-1] + 1])

    with ThreadPoolExecutor(args.workers) as pool:
        while True:
            start = int(rng.integers(0, len(array) - steps))
            list(pool.map(copy, parts, [start] * len(parts)))
            yield out[: args.batch_size], out[args.batch_size :]


def memcpy_sample_batches(store, args, epochs: int | None = None):
    """The batch loader's bytes and nothing else: each batch's samples (the sampler's positions, in its order)
    copied step by step from the memmap into a reused buffer, by the same number of threads, each copying whole
    batches in turn into its own buffer (no split, no join, no buffer bookkeeping: the least a loader can do)."""
    from sample_batches import batches_of, sampler_batches, uncompressed

    batches = sampler_batches(store, args.batch_size)  # epoch 0's, as the loader's first
    return batches_of(uncompressed(store), batches, args.workers, args.batch_size, store.shape[1:], store.dtype, epochs)


def warm_up(it, batches, seconds: float):
    """`it` (or a fresh pass of `batches` where it ended) after `seconds` of batches, at least 2.

    So that a warm row is measured in its steady state: the batch loader's ring of 7 buffer pairs (220 MB at s) is
    only touched over its first two passes, and on this VM a page new to the process faults on the host at 350-500
    MB/s (at s the first pass ran at 3.3 k and the second at 6.9 k samples/s, against 15 k after). After 2 batches,
    as before 2026-12-03, a 4 s row still paid that; the ceilings touch their two buffer pairs in those 2."""
    n, start, fresh = 0, time.perf_counter(), False
    while n < 2 or time.perf_counter() - start < seconds:
        try:
            next(it)
        except StopIteration:  # a pass shorter than the warm-up: the next one
            if fresh:  # a pass of no batches would start new ones for ever
                raise RuntimeError("the loader's pass has no batches to warm up with") from None
            it, fresh = iter(batches), True
            continue
        n, fresh = n + 1, False
    return it


def measure(name: str, args) -> dict:
    """Batches/s of one loader for about `args.seconds` (after `args.warm_up` s of batches), in this process."""
    # memcpy copies slabs of 2 x batch steps: from the one-shard store when there is one (shards may be smaller)
    path = args.one_shard if name.endswith("-1shard") or (name == "memcpy" and args.one_shard) else args.store
    if args.cold:
        evict([path])
    if name.startswith("read-"):
        read = read_all([path / "data"], direct=name == "read-direct")
        nbytes = read["mb"] * 1e6
        sample = 2 * open_store(path).array[0].nbytes  # x and y of one sample, for samples/s
        return {
            "loader": name,
            "mode": "load",
            "workers": 1,
            "batch_size": args.batch_size,
            "batches": 0,
            "seconds": read["seconds"],
            "samples_per_s": round(nbytes / sample / read["seconds"], 1),
            "mb_per_s": read["mb_per_s"],
            "mb": read["mb"],
            "peak_rss_mb": 0.0,
            "peak_private_mb": 0.0,
        }
    store = open_store(path)
    with PeakRSS() as peak:
        if name == "memcpy":
            batches = memcpy_batches(store, args)
        elif name == "memcpy-samples":
            batches = memcpy_sample_batches(store, args, epochs=1 if args.cold else None)
        else:
            batches = make_loader(name.removesuffix("-1shard"), store, args, "cpu")
        it = iter(batches)
        if not args.cold:  # cold: one whole epoch from the evicted cache, first batch included
            it = warm_up(it, batches, args.warm_up)
        n, nbytes, start = 0, 0, time.perf_counter()
        while args.cold or time.perf_counter() - start < args.seconds:
            try:
                x, y = next(it)
            except StopIteration:  # one epoch is shorter than the time asked for: start the next
                if args.cold:
                    break
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
        "warm_up_s": 0.0 if args.cold else args.warm_up,
    }


def train(name: str, args) -> dict:
    """Training steps/s of a small UNet fed by loader `name` ("model-alone": one GPU-resident batch)."""
    import torch

    from canonstore.loaders import StoreDataset
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


def warm_page_cache(store, inputs: bool = True) -> None:
    """Read the store's files (and its inputs, for the rows that read them) once so that rows read from memory."""
    files = [p for p in store.path.rglob("*") if p.is_file()]
    files += [Path(i["path"]) for i in store.attrs["inputs"]] if inputs else []
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def add_ratios(rows: list[dict]) -> None:
    """Each row's ratios to netcdf and to the ceilings: the median over rounds of the ratio within a round."""
    for r in rows:
        if r["mode"] != "load":
            alone = next(t for t in rows if t["loader"] == "model-alone")
            r["of_model_alone"] = round(r["steps_per_s"] / alone["steps_per_s"], 3)
            continue
        for key, base, field in (
            ("x_netcdf", "netcdf", "samples_per_s"),
            ("of_memcpy", "memcpy", "mb_per_s"),
            ("of_memcpy_samples", "memcpy-samples", "mb_per_s"),
            ("of_read_seq", "read-seq", "mb_per_s"),
        ):
            other = next((o for o in rows if o["loader"] == base and o["mode"] == "load"), None)
            if other is not None:
                ratios = [a[field] / b[field] for a, b in zip(r["rounds"], other["rounds"])]
                r[key] = round(float(np.median(ratios)), 3)
                r[key + "_spread"] = [round(min(ratios), 3), round(max(ratios), 3)]


def median_row(runs: list[dict]) -> dict:
    """The run with the median samples/s, with every run's numbers beside it ("rounds", "spread")."""
    ranked = sorted(runs, key=lambda r: r["samples_per_s"])
    row = dict(ranked[(len(ranked) - 1) // 2])
    row["rounds"] = [{k: r[k] for k in ("samples_per_s", "mb_per_s")} for r in runs]
    row["spread"] = [ranked[0]["samples_per_s"], ranked[-1]["samples_per_s"]]
    row["repeat"] = len(runs)
    return row


def print_table(rows: list[dict]) -> None:
    def ratio(r, key):
        return f"{r[key]:.1%}" if key in r else "-"

    print(
        f"\n{'loader':<20}{'samples/s':>11}{'spread':>19}{'MB/s':>10}{'x netcdf':>10}{'of memcpy':>11}"
        f"{'of samples':>12}{'of read-seq':>13}{'peak RSS MB':>13}"
    )
    for r in (r for r in rows if r["mode"] == "load"):
        spread = "{:.0f}-{:.0f}".format(*r["spread"])
        netcdf = f"{r['x_netcdf']:.2f}" if "x_netcdf" in r else "-"
        print(
            f"{r['loader']:<20}{r['samples_per_s']:>11.1f}{spread:>19}{r['mb_per_s']:>10.1f}{netcdf:>10}"
            f"{ratio(r, 'of_memcpy'):>11}{ratio(r, 'of_memcpy_samples'):>12}{ratio(r, 'of_read_seq'):>13}"
            f"{r['peak_rss_mb']:>13.1f}"
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
    parser.add_argument("--warm-up", type=float, default=1.0, help="seconds of batches before a warm row is timed")
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
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every row, interleaved; medians reported")
    parser.add_argument(
        "--cold", action="store_true", help="store rows from an evicted page cache, and the disk's limits"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one row, print JSON
    args = parser.parse_args()
    if args.one:
        mode, name = args.one.split(":")
        print(json.dumps(measure(name, args) if mode == "load" else train(name, args)))
        return

    store = open_store(args.store)
    jobs = [("load", name) for name in (COLD if args.cold else LOADERS)]
    if args.one_shard:
        jobs.insert(jobs.index(("load", "store-batch")) + 1, ("load", "store-batch-1shard"))
    if not args.cold and (args.train or (args.train is None and _cuda_available())):
        jobs += [("train", name) for name in ("model-alone", "store-batch", "store-dataloader", "netcdf")]
    if args.only:
        jobs = [job for job in jobs if ":".join(job) in args.only.split(",")]
    runs: dict[tuple, list] = {job: [] for job in jobs}
    for round_ in range(args.repeat):
        for mode, name in jobs if round_ % 2 == 0 else jobs[::-1]:  # A B C, C B A: drifts hit every row alike
            if not args.cold:  # cheap when warm; undoes what another program evicted meanwhile
                own = open_store(args.one_shard if name.endswith("-1shard") else args.store)
                warm_page_cache(own, inputs=name == "netcdf")  # the others' pages stay, on a machine short of memory
            runs[(mode, name)].append(run_row(mode, name, args))
            print(f"  {mode:<6}{name:<20}{runs[(mode, name)][-1]['samples_per_s']:>10.1f} samples/s", flush=True)
    rows = [median_row(runs[job]) for job in jobs]
    for row in rows:
        row["store"], row["cold"] = str(args.store), args.cold
    if args.only:
        print(json.dumps(rows))
        return
    add_ratios(rows)
    print_table(rows)
    if args.one_shard:
        loads = {r["loader"]: r for r in rows if r["mode"] == "load"}
        shards = store.attrs["layout"].get("shards", 1)
        ratios = [
            a["mb_per_s"] / b["mb_per_s"]
            for a, b in zip(loads["store-batch"]["rounds"], loads["store-batch-1shard"]["rounds"])
        ]
        print(
            f"\nstore-batch over {shards} shards / over one shard: {np.median(ratios):.3f}"
            f" (rounds {min(ratios):.3f}-{max(ratios):.3f})"
        )
    name = "loader-cold" if args.cold else "loader"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.results / f"{name}.png")
    print(f"\nwrote {args.results / f'{name}.json'} and {args.results / f'{name}.png'}")


def _cuda_available() -> bool:
    import torch  # only asked when --train is not given: the rows' own processes import what they need

    return torch.cuda.is_available()


def run_row(mode: str, name: str, args) -> dict:
    """One row measured in a process of its own (its memory and threads are its own)."""
    cmd = [sys.executable, __file__, str(args.store), "--one", f"{mode}:{name}"]
    for flag in ("workers", "batch_size", "seconds", "warm_up", "width"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--one-shard", str(args.one_shard)] if args.one_shard else []
    cmd += ["--cold"] if args.cold else []
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        sys.exit(f"{mode} {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
