"""Build throughput and peak memory at three input sizes, in-process and on dask LocalClusters,
next to the raw read limit and the disk's durable-write limit.

    python bench/build.py [--sizes 0.25 1 2] [--years 3] [--workers 1 2] [--repeat 3] [--work /tmp/bench-build]

For each demo SIZE (input bytes grow with SIZE: 0.25 -> 2 is 8x), in one run and each in its own
process: (1) the raw read limit, netCDF4 in one thread decoding every input variable; (2) the
disk's durable-write limit, the store's bytes written and fdatasync'd (a build must put them on
disk); builds (3) into one shard and (4) into 8 MiB shards in-process; and (5) on a LocalCluster
of each --workers count (8 MiB shards, one task per shard; peak RSS is the largest worker's,
the driver's in brackets). MB are the store's float32 bytes. With --repeat N every row is measured N
times, the rows interleaved (A B C, A B C, ...), and each row's median and spread follow, with each
build's share of the durable-write limit measured beside it. Writes a table, bench/results/build.json
and build.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RECIPE = """name: bench
sources: [raw/*.nc]
static: [lsm, orography]
splits: {{train: [2000, {last_train}], val: [{val}, {val}], test: [{test}, {test}], embargo: 4}}
storage: {{shard_mb: {shard_mb}}}
"""

RAW_READ = """
import sys, time, netCDF4, numpy as np
began, cpu, nbytes = time.perf_counter(), time.process_time(), 0
for path in sys.argv[1:]:
    with netCDF4.Dataset(path) as nc:
        for var in nc.variables.values():
            if var.dimensions and var.dimensions[0] == "time" and var.ndim > 1:
                nbytes += np.asarray(var[:], dtype=np.float32).nbytes
print(nbytes, time.perf_counter() - began, time.process_time() - cpu)
"""

DURABLE_WRITE = """
import os, sys, time, numpy as np
nbytes, block = int(sys.argv[2]), np.ones(8 << 20, np.uint8)
began, cpu = time.perf_counter(), time.process_time()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
for offset in range(0, nbytes, block.size):
    os.pwrite(fd, block[:min(block.size, nbytes - offset)], offset)
os.fdatasync(fd)
os.close(fd)
seconds = time.perf_counter() - began
os.unlink(sys.argv[1])
print(nbytes, seconds, time.process_time() - cpu)
"""

BUILD = """
import resource, sys, time
from canonstore.preprocess import build

def peak_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

if __name__ == "__main__":  # dask workers start by importing this script
    workers = int(sys.argv[3])
    if workers:
        import dask
        from distributed import Client, LocalCluster
        from canonstore.preprocess.executor import UNTRIMMED
        local = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None, silence_logs=40)
        with dask.config.set(UNTRIMMED), local as cluster, Client(cluster) as client:
            cpu, workers_cpu = time.process_time(), client.run(time.process_time)
            began = time.perf_counter()  # the cluster is up: what a cluster user pays per build
            result = build(sys.argv[1], sys.argv[2], force=True, progress=False,
                           scheduler=cluster.scheduler_address)
            seconds = time.perf_counter() - began
            cpu = time.process_time() - cpu
            workers_cpu = sum(now - workers_cpu[worker] for worker, now in client.run(time.process_time).items())
            worker_kb = max(client.run(peak_kb).values())
    else:
        cpu, workers_cpu = time.process_time(), 0
        began = time.perf_counter()
        result = build(sys.argv[1], sys.argv[2], force=True, progress=False)
        seconds, cpu, worker_kb = time.perf_counter() - began, time.process_time() - cpu, 0
    print(result.bytes, seconds, peak_kb(), worker_kb, cpu, workers_cpu)
"""


def run(code: str, *args: str, values: int = 3) -> list[float]:
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:  # a file: dask's spawned workers import it
        script.write(code)
        script.flush()
        out = subprocess.run([sys.executable, script.name, *args], check=True, capture_output=True, text=True).stdout
    return [float(v) for v in out.split()[-values:]]


def measure(work: Path, size: float, years: int, workers: list[int], repeats: int = 1) -> list[dict]:
    folder = work / f"size-{size:g}"
    if not (folder / "raw" / ".complete").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "canonstore",
                "demo-data",
                str(folder / "raw"),
                "--size",
                str(size),
                "--years",
                str(years),
            ],
            check=True,
            capture_output=True,
        )
    files = sorted(str(p) for p in (folder / "raw").glob("*.nc"))
    last = 2000 + years - 1
    runs = [("in-process, one shard", 10**6, 0), ("in-process, 8 MiB shards", 8, 0)]
    runs += [(f"LocalCluster {n} worker{'s' if n > 1 else ''}, 8 MiB shards", 8, n) for n in workers]
    rows = []
    for repeat in range(repeats):
        raw_bytes, raw_seconds, raw_cpu = run(RAW_READ, *files)
        rows.append(
            _row(size, "raw read (netCDF4, 1 thread)", None, raw_bytes, raw_seconds, repeat=repeat, cpu=raw_cpu)
        )
        disk_bytes, disk_seconds, disk_cpu = run(DURABLE_WRITE, str(folder / "durable.tmp"), str(int(raw_bytes)))
        rows.append(
            _row(size, "durable write (pwrite+fdatasync)", None, disk_bytes, disk_seconds, repeat=repeat, cpu=disk_cpu)
        )
        for layout, shard_mb, n in runs:
            (folder / "bench.yaml").write_text(
                RECIPE.format(last_train=last - 2, val=last - 1, test=last, shard_mb=shard_mb)
            )
            nbytes, seconds, rss_kb, worker_kb, cpu, workers_cpu = run(
                BUILD, str(folder / "bench.yaml"), str(folder / "bench.zarr"), str(n), values=6
            )
            attrs = json.loads((folder / "bench.zarr" / "zarr.json").read_text())["attributes"]["canonstore"]
            shards = attrs["layout"]["shards"]
            rows.append(
                _row(
                    size,
                    layout,
                    shards,
                    nbytes,
                    seconds,
                    worker_kb or rss_kb,
                    rss_kb if worker_kb else None,
                    n or None,
                    repeat,
                    cpu + workers_cpu,
                    workers_cpu if n else None,
                )
            )
            shutil.rmtree(folder / "bench.zarr")
    return rows


def _row(
    size,
    layout,
    shards,
    nbytes,
    seconds,
    rss_kb=None,
    driver_kb=None,
    workers=None,
    repeat=0,
    cpu=0.0,
    workers_cpu=None,
) -> dict:
    """One measurement; `cpu`: user + system seconds of every process of the row (a cluster's: driver and workers,
    `workers_cpu` the workers' part); CPU seconds per GB and cores busy (CPU over wall seconds, 2 = both cores of
    this box the whole time) from the unrounded values."""
    return {
        "size": size,
        "repeat": repeat,
        "layout": layout,
        "workers": workers,
        "shards": shards,
        "mb": round(nbytes / 1e6, 1),
        "seconds": round(seconds, 2),
        "mb_per_s": round(nbytes / 1e6 / seconds, 1),
        "peak_rss_mb": round(rss_kb / 1024, 1) if rss_kb else None,
        "driver_rss_mb": round(driver_kb / 1024, 1) if driver_kb else None,
        "cpu_s": round(cpu, 2),
        "workers_cpu_s": None if workers_cpu is None else round(workers_cpu, 2),
        "cpu_s_per_gb": round(cpu / (nbytes / 1e9), 2),
        "cores_busy": round(cpu / seconds, 2),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(layouts)
    for i, layout in enumerate(layouts):
        values = [next((r["mb_per_s"] for r in rows if r["size"] == s and r["layout"] == layout), 0) for s in sizes]
        ax.bar(np.arange(len(sizes)) + i * width, values, width, label=layout)
    ax.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2, [f"SIZE {s:g} ({_mb(rows, s):.0f} MB)" for s in sizes])
    ax.set_ylabel("MB/s (store bytes)")
    ax.set_title("canonstore build throughput vs the raw read and durable write limits (2-core box, warm cache)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _beside(rows: list[dict], row: dict, name: str) -> dict:
    """The row `name` (a limit) of the same size and repeat as `row`: measured beside it."""
    return next(
        x for x in rows if (x["size"], x["repeat"]) == (row["size"], row["repeat"]) and x["layout"].startswith(name)
    )


def _summary(rows: list[dict]) -> None:
    """Per size and run: median MB/s and spread over the repeats; for builds, the share of the durable-write
    limit measured beside each (median and spread); CPU seconds per GB and cores busy (CPU s / wall s), medians."""
    print(
        f"\n{'SIZE':>5}  {'run':<40}{'MB/s median':>12}{'spread':>16}{'of disk median':>16}{'spread':>14}{'RSS max':>9}"
        f"{'CPU s/GB':>10}{'cores busy':>12}"
    )
    for size, layout in dict.fromkeys((r["size"], r["layout"]) for r in rows):
        mine = [r for r in rows if (r["size"], r["layout"]) == (size, layout)]
        speeds = [r["mb_per_s"] for r in mine]
        shares = [r["mb_per_s"] / _beside(rows, r, "durable write")["mb_per_s"] for r in mine]
        rss = max((r["peak_rss_mb"] or 0) for r in mine)
        print(
            f"{size:>5g}  {layout:<40}{np.median(speeds):>12.0f}{f'{min(speeds):.0f}-{max(speeds):.0f}':>16}"
            f"{np.median(shares):>16.0%}{f'{min(shares):.0%}-{max(shares):.0%}':>14}{rss or '':>9}"
            f"{np.median([r['cpu_s_per_gb'] for r in mine]):>10.2f}{np.median([r['cores_busy'] for r in mine]):>12.2f}"
        )


def _mb(rows, size) -> float:
    return next(r["mb"] for r in rows if r["size"] == size and r["shards"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[0.25, 1, 2])
    parser.add_argument("--years", type=int, default=3)
    parser.add_argument("--workers", nargs="*", type=int, default=[1, 2], help="LocalCluster sizes (none: skip)")
    parser.add_argument("--repeat", type=int, default=1, help="measure every row N times, interleaved")
    parser.add_argument("--work", type=Path, default=Path("/tmp/canonstore-bench-build"))
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    rows = [row for size in args.sizes for row in measure(args.work, size, args.years, args.workers, args.repeat)]
    print(
        f"{'SIZE':>5}  {'run':<40}{'shards':>7}{'MB':>8}{'seconds':>9}{'MB/s':>8}{'of raw':>8}{'of disk':>8}"
        f"{'peak RSS MB':>13}{'CPU s':>7}{'cores busy':>12}"
    )
    for r in rows:
        raw, disk = (_beside(rows, r, name) for name in ("raw read", "durable write"))
        rss = (
            f"{r['peak_rss_mb']}" + (f" ({r['driver_rss_mb']})" if r["driver_rss_mb"] else "")
            if r["peak_rss_mb"]
            else ""
        )
        print(
            f"{r['size']:>5g}  {r['layout']:<40}{r['shards'] or '':>7}{r['mb']:>8}{r['seconds']:>9}{r['mb_per_s']:>8}"
            f"{r['mb_per_s'] / raw['mb_per_s']:>8.0%}{r['mb_per_s'] / disk['mb_per_s']:>8.0%}{rss:>13}"
            f"{r['cpu_s']:>7}{r['cores_busy']:>12.2f}"
        )
    if args.repeat > 1:
        _summary(rows)
    small, large = min(args.sizes), max(args.sizes)
    for layout in dict.fromkeys(r["layout"] for r in rows if r["shards"]):
        a, b = (next(r for r in rows if r["size"] == s and r["layout"] == layout) for s in (small, large))
        print(f"{layout}: input x{b['mb'] / a['mb']:.1f} -> peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")
    for size in args.sizes:
        by = {r["workers"]: r for r in rows if r["size"] == size and r["workers"]}
        if 1 in by:
            print(
                f"SIZE {size:g}: "
                + ", ".join(
                    f"{n} workers / 1 worker = x{by[n]['mb_per_s'] / by[1]['mb_per_s']:.2f}"
                    for n in sorted(by)
                    if n > 1
                )
            )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "build.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.results / "build.png")
    print(f"wrote {args.results / 'build.json'} and {args.results / 'build.png'}")


if __name__ == "__main__":
    main()
