"""`make bench-peers`: canonstore side by side with the tools users already have, in one run.

    python bench/peers/run.py [--sizes s m l] [--workers 2] [--seconds 8] [--data data/peers] \
        [--results bench/results/peers]

For each sample size (bench/peers/data.py): writes the raw NetCDF, builds it with `canonstore build` and
with `anemoi-datasets create` (wall time, peak RSS, bytes on disk), lists one epoch of train batches
(canonstore's seeded order: the plan), then runs every row of rows.py over the plan in its own process
and venv, warm (files read once first) and cold (every file's pages evicted with posix_fadvise
DONTNEED first; the median of 3 such runs), next to sequential and O_DIRECT reads of the same files from
cold cache. Each row's first batch is compared with canonstore's, and anemoi's statistics with canonstore's.
Writes peers.json, one chart per size, and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data import SIZES, layout, write_size  # noqa: E402

CANON = Path(sys.executable)
ANEMOI = HERE.parent / ".venv-peers" / "bin" / "python"  # anemoi-datasets, xbatcher (zarr 2)
ZARR3 = HERE.parent / ".venv-peers-zarr3" / "bin" / "python"  # zarr-python 3, zarrs, tensorstore
# row: (python, which files it reads)
ROWS = {
    "canonstore-batch": (CANON, "store"),
    "canonstore-dataloader": (CANON, "store"),
    "anemoi": (ANEMOI, "anemoi"),
    "xbatcher": (ANEMOI, "raw"),
    "xbatcher-chunked": (ANEMOI, "raw"),
    "zarr-python": (ZARR3, "store"),
    "zarrs": (ZARR3, "store"),
    "tensorstore": (ZARR3, "store"),
    "netcdf-xarray": (CANON, "raw"),
    "netcdf4-batch": (CANON, "raw"),
    "memcpy": (CANON, "store"),
}


# -- files and the page cache ---------------------------------------------------------------------------
def files_of(path: Path) -> list[Path]:
    return sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in files_of(path))


def evict(paths) -> None:
    """Drop the files' pages from the page cache (no root needed; dirty pages are written first)."""
    os.sync()
    for path in paths:
        for f in files_of(path):
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
        for f in files_of(path):
            fd = os.open(f, os.O_RDONLY | (os.O_DIRECT if direct else 0))
            try:
                while (got := os.readv(fd, [buf])) > 0:
                    total += got
            finally:
                os.close(fd)
    elapsed = time.perf_counter() - start
    return {"mb": round(total / 1e6, 1), "seconds": round(elapsed, 3), "mb_per_s": round(total / elapsed / 1e6, 1)}


# -- measured commands ----------------------------------------------------------------------------------
def run_measured(cmd: list, cwd=None) -> dict:
    """Run `cmd`: wall time and the peak RSS of its process tree (sampled every 50 ms)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    peak = [0]

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while proc.poll() is None:
            rss = 0
            for p in [root] + root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            peak[0] = max(peak[0], rss)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    thread.join()
    return {
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(peak[0] / 1e6, 1),
        "stdout": out,
        "stderr": err,
    }


def build(where: Path) -> dict:
    """Both builds of one size's raw files (skipped when done before: the numbers are kept beside them)."""
    done = where / "builds.json"
    if done.exists() and (where / "canonstore.zarr").exists() and (where / "anemoi.zarr").exists():
        return json.loads(done.read_text())
    results = {}
    tools = {
        "canonstore": [CANON.parent / "canonstore", "build", "canonstore.yaml", "--out", "canonstore.zarr"],
        "anemoi": [ANEMOI.parent / "anemoi-datasets", "create", "anemoi.yaml", "anemoi.zarr"],
    }
    for tool, cmd in tools.items():
        shutil.rmtree(where / f"{tool}.zarr", ignore_errors=True)
        read_all([where / "raw"])  # both start from a warm page cache
        print(f"  build {where.name} with {tool} ...", flush=True)
        got = run_measured(cmd, cwd=where)
        if got["rc"]:
            raise SystemExit(f"{tool} build of {where} failed:\n{got['stderr'][-3000:]}")
        results[tool] = {
            "wall_s": got["wall_s"],
            "peak_rss_mb": got["peak_rss_mb"],
            "disk_mb": round(disk_bytes(where / f"{tool}.zarr") / 1e6, 1),
        }
    results["raw_mb"] = round(disk_bytes(where / "raw") / 1e6, 1)
    done.write_text(json.dumps(results, indent=1) + "\n")
    return results


# -- the plan -------------------------------------------------------------------------------------------
def write_plan(where: Path, size: str, args) -> Path:
    """One epoch of train batches in canonstore's seeded order (seed 0), and what every row needs to read it."""
    from canonstore import open_store
    from canonstore.loaders import BatchSampler, StoreDataset

    store = open_store(where / "canonstore.zarr")
    spec = layout(size)
    dataset = StoreDataset(store, "train", lead=1)
    sampler = BatchSampler(len(dataset), spec["batch"], shuffle=True, seed=0, drop_last=True)
    batches = [dataset.times[b].tolist() for b in sampler]
    variables = store._group["channel_variable"][:].tolist()
    levels = store._group["channel_level"][:].tolist()
    fields = [(v, None if np.isnan(lev) else int(lev)) for v, lev in zip(variables, levels)]
    plan = {
        "size": size,
        "store": str((where / "canonstore.zarr").resolve()),
        "anemoi": str((where / "anemoi.zarr").resolve()),
        "raw": [str(p.resolve()) for p in files_of(where / "raw")],
        "fields": fields,
        "anemoi_channels": [v if lev is None else f"{v}_{lev}" for v, lev in fields],
        "grid": list(store.shape[2:]),
        "mean": store.stats["mean"].tolist(),
        "std": store.stats["std"].tolist(),
        "batch": spec["batch"],
        "workers": args.workers,
        "seconds": args.seconds,
        "passes": 50,
        "batches": batches,
        "sample_mb": round(int(np.prod(store.shape[1:])) * 4 / 1e6, 3),
    }
    path = where / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def run_row(plan: Path, row: str, mode: str) -> dict:
    python, _ = ROWS[row]
    if not python.exists():
        return {
            "row": row,
            "mode": mode,
            "error": f"{python} not found: run `make bench-peers` (it installs the peers)",
        }
    done = subprocess.run(
        [python, HERE / "rows.py", plan, row, mode],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if done.returncode:
        return {
            "row": row,
            "mode": mode,
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
            "stderr": done.stderr[-4000:],
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict], key: str = "samples_per_s") -> dict:
    """The run with the median `key` (an error if any failed), with every run's value in `repeats`."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r[key])
    return {**ordered[(len(ordered) - 1) // 2], "repeats": [r[key] for r in runs]}


def compare_first_batches(where: Path) -> dict:
    """Max |difference| of each row's first batch from canonstore's batch path (same samples, same order)."""
    if not (where / "first-canonstore-batch-x.npy").exists():
        return {}
    ref = {k: np.load(where / f"first-canonstore-batch-{k}.npy") for k in "xy"}
    diffs = {}
    for row in ROWS:
        paths = {k: where / f"first-{row}-{k}.npy" for k in "xy"}
        if row == "canonstore-batch" or not all(p.exists() for p in paths.values()):
            continue
        got = {k: np.load(p) for k, p in paths.items()}
        if any(got[k].shape != ref[k].shape for k in "xy"):
            diffs[row] = f"shape {got['x'].shape} != {ref['x'].shape}"
        else:
            diffs[row] = float(max(np.abs(got[k] - ref[k]).max() for k in "xy"))
        for p in paths.values():
            p.unlink()
    return diffs


def compare_stats(where: Path, plan: dict) -> dict:
    """Largest relative difference of anemoi's statistics (same period: the train split) from canonstore's."""
    import zarr

    group = zarr.open_group(where / "anemoi.zarr", mode="r", zarr_format=2)
    order = [group.attrs["variables"].index(name) for name in plan["anemoi_channels"]]
    mean, stdev = group["mean"][:][order], group["stdev"][:][order]
    ours_mean, ours_std = np.asarray(plan["mean"]), np.asarray(plan["std"])
    return {
        "mean_max_rel_diff": float(np.max(np.abs(mean - ours_mean) / ours_std)),  # in units of the std
        "std_max_rel_diff": float(np.max(np.abs(stdev / ours_std - 1))),
    }


def bench_size(size: str, args) -> dict:
    where = write_size(args.data, size)
    builds = build(where)
    plan = write_plan(where, size, args)
    sets = {"store": where / "canonstore.zarr", "anemoi": where / "anemoi.zarr", "raw": where / "raw"}
    rows = []
    for row, (_, reads) in ROWS.items():
        if args.rows and row not in args.rows:
            continue
        for mode in ("warm", "cold") if row != "memcpy" else ("warm",):
            if mode == "warm":
                read_all([sets[reads]])
                result = run_row(plan, row, mode)
            else:  # cold is noisy on a VM (the host caches too): the median of `cold_repeats` evicted runs
                runs = []
                for _ in range(args.cold_repeats):
                    evict(sets.values())
                    runs.append(run_row(plan, row, mode))
                result = median_run(runs)
            result["reads"] = reads
            rows.append(result)
            shown = f"{result['samples_per_s']:>10.1f} samples/s" if "error" not in result else result["error"]
            print(f"  {size} {mode:<5}{row:<22}{shown}", flush=True)
    cold_reads = {}
    for name, path in sets.items():
        cold_reads[name] = {}
        for kind in ("sequential", "direct"):
            runs = []
            for _ in range(args.cold_repeats):
                evict(sets.values())
                runs.append(read_all([path], direct=kind == "direct"))
            cold_reads[name][kind] = median_run(runs, "mb_per_s")
    spec = layout(size)
    return {
        "size": size,
        "shape": [spec["channels"], *spec["grid"]],
        "steps": spec["steps"],
        "batch": spec["batch"],
        "workers": args.workers,
        "sample_mb": json.loads(plan.read_text())["sample_mb"],
        "builds": builds,
        "rows": rows,
        "cold_reads": cold_reads,
        "first_batch_max_abs_diff": compare_first_batches(where),
        "anemoi_stats_vs_canonstore": compare_stats(where, json.loads(plan.read_text())),
    }


# -- ratios and tables ----------------------------------------------------------------------------------
def add_ratios(result: dict) -> None:
    rows = {(r["row"], r["mode"]): r for r in result["rows"] if "error" not in r}
    ours = {mode: rows.get(("canonstore-batch", mode)) for mode in ("warm", "cold")}
    memcpy = rows.get(("memcpy", "warm"))
    for (_row, mode), r in rows.items():
        if ours[mode]:
            r["canonstore_x"] = round(ours[mode]["samples_per_s"] / r["samples_per_s"], 2)
        if mode == "warm" and memcpy:
            r["of_memcpy"] = round(r["mb_per_s"] / memcpy["mb_per_s"], 3)
        if mode == "cold":
            r["of_sequential_cold"] = round(
                r["mb_per_s"] / result["cold_reads"][r["reads"]]["sequential"]["mb_per_s"], 3
            )


def print_tables(result: dict) -> None:
    shape = "x".join(map(str, result["shape"]))
    print(f"\n### {shape} ({result['sample_mb']} MB a sample), batch {result['batch']}, {result['workers']} workers\n")
    print(
        "| row | warm samples/s | warm MB/s | of memcpy | cold samples/s | of sequential cold read "
        "| canonstore x (warm / cold) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    by = {}
    for r in result["rows"]:
        by.setdefault(r["row"], {})[r["mode"]] = r
    for row, modes in by.items():
        w, c = modes.get("warm", {}), modes.get("cold", {})
        if "error" in w:
            print(f"| {row} | failed: {w['error'][:120]} | | | | | |")
            continue
        cold = (
            ("", "")
            if not c
            else (
                (f"failed: {c['error'][:60]}", "")
                if "error" in c
                else (f"{c['samples_per_s']:.1f}", f"{c['of_sequential_cold']:.0%}")
            )
        )
        ratios = f"{w.get('canonstore_x', '')} / {c.get('canonstore_x', '')}" if c else f"{w.get('canonstore_x', '')}"
        print(
            f"| {row} | {w['samples_per_s']:.1f} | {w['mb_per_s']:.0f} | {w.get('of_memcpy', 0):.0%} | {cold[0]} | "
            f"{cold[1]} | {ratios} |"
        )
    reads = result["cold_reads"]
    print(
        "\ncold reads of the files, MB/s (sequential through the page cache / O_DIRECT): "
        + ", ".join(f"{k} {v['sequential']['mb_per_s']:.0f} / {v['direct']['mb_per_s']:.0f}" for k, v in reads.items())
    )
    b = result["builds"]
    print(
        f"\nbuild: canonstore {b['canonstore']['wall_s']} s, {b['canonstore']['peak_rss_mb']} MB peak RSS, "
        f"{b['canonstore']['disk_mb']} MB | anemoi-datasets create {b['anemoi']['wall_s']} s, "
        f"{b['anemoi']['peak_rss_mb']} MB, {b['anemoi']['disk_mb']} MB | raw {b['raw_mb']} MB"
    )
    print(f"first batch, max |row - canonstore-batch|: {result['first_batch_max_abs_diff']}")
    print(f"anemoi's statistics vs canonstore's (same period): {result['anemoi_stats_vs_canonstore']}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["row"] for r in result["rows"]))
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    y = np.arange(len(names))
    for k, (mode, color) in enumerate((("warm", "tab:orange"), ("cold", "tab:blue"))):
        values = [
            next(
                (
                    r["samples_per_s"]
                    for r in result["rows"]
                    if r["row"] == n and r["mode"] == mode and "error" not in r
                ),
                0,
            )
            for n in names
        ]
        ax.barh(y + (k - 0.5) * 0.4, values, height=0.4, color=color, label=mode)
    ax.set_yticks(y, names)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("samples/s (log)")
    ax.legend()
    ax.set_title(f"{'x'.join(map(str, result['shape']))} samples, batch {result['batch']}, {result['workers']} workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0, help="time cap of each warm row (cold rows: 2x)")
    parser.add_argument("--cold-repeats", type=int, default=3, help="evicted runs per cold row (the median is kept)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="only these rows (default: all)")
    parser.add_argument("--data", type=Path, default=Path("data/peers"))
    parser.add_argument("--results", type=Path, default=Path("bench/results/peers"))
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        result = bench_size(size, args)
        add_ratios(result)
        print_tables(result)
        plot(result, args.results / f"peers-{size}.png")
        results.append(result)
        (args.results / "peers.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.results / 'peers.json'} and peers-<size>.png")


if __name__ == "__main__":
    main()
