"""Build throughput and peak memory at three input sizes, one shard vs many, next to the raw read limit.

    python bench/build.py [--sizes 0.25 1 2] [--years 3] [--work /tmp/canonstore-bench-build]

For each demo SIZE (input bytes grow with SIZE: 0.25 -> 2 is 8x) the same raw files are
(1) read once by netCDF4 in one thread, every input variable decoded (the raw read limit), and
built (2) into one shard and (3) into shards of 8 MiB, each build in its own process (peak RSS
is that process's ru_maxrss), all in one run. MB are the store's float32 bytes (what the build
writes, the same count of values the raw read decodes). Writes a table and
bench/results/build.json; an 8x-input build should peak within 20% of the 1x one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

RECIPE = """name: bench
sources: [raw/*.nc]
static: [lsm, orography]
splits: {{train: [2000, {last_train}], val: [{val}, {val}], test: [{test}, {test}], embargo: 4}}
storage: {{shard_mb: {shard_mb}}}
"""

RAW_READ = """
import sys, time, netCDF4, numpy as np
began, nbytes = time.perf_counter(), 0
for path in sys.argv[1:]:
    with netCDF4.Dataset(path) as nc:
        for var in nc.variables.values():
            if var.dimensions and var.dimensions[0] == "time" and var.ndim > 1:
                nbytes += np.asarray(var[:], dtype=np.float32).nbytes
print(nbytes, time.perf_counter() - began)
"""

BUILD = """
import resource, sys, time
from canonstore.preprocess import build
began = time.perf_counter()
result = build(sys.argv[1], sys.argv[2], force=True, progress=False, log=lambda *_: None)
print(result.bytes, time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(code: str, *args: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    return [float(v) for v in out.split()[-3:]]


def measure(work: Path, size: float, years: int) -> list[dict]:
    folder = work / f"size-{size:g}"
    if not (folder / "raw" / ".complete").exists():
        subprocess.run([sys.executable, "-m", "canonstore", "demo-data", str(folder / "raw"), "--size", str(size),
                        "--years", str(years)], check=True, capture_output=True)
    files = sorted(str(p) for p in (folder / "raw").glob("*.nc"))
    raw_bytes, raw_seconds = run(RAW_READ, *files)
    last = 2000 + years - 1
    rows = [{"size": size, "layout": "raw read (netCDF4, 1 thread)", "shards": None, "mb": round(raw_bytes / 1e6, 1),
             "seconds": round(raw_seconds, 2), "mb_per_s": round(raw_bytes / 1e6 / raw_seconds, 1), "peak_rss_mb": None}]
    for layout, shard_mb in (("one shard", 10**6), ("many shards", 8)):
        (folder / "bench.yaml").write_text(RECIPE.format(last_train=last - 2, val=last - 1, test=last, shard_mb=shard_mb))
        nbytes, seconds, rss_kb = run(BUILD, str(folder / "bench.yaml"), str(folder / "bench.zarr"))
        shards = json.loads((folder / "bench.zarr" / "zarr.json").read_text())["attributes"]["canonstore"]["layout"]["shards"]
        rows.append({"size": size, "layout": layout, "shards": shards, "mb": round(nbytes / 1e6, 1),
                     "seconds": round(seconds, 2), "mb_per_s": round(nbytes / 1e6 / seconds, 1),
                     "peak_rss_mb": round(rss_kb / 1024, 1)})
        shutil.rmtree(folder / "bench.zarr")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[0.25, 1, 2])
    parser.add_argument("--years", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/canonstore-bench-build"))
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    rows = [row for size in args.sizes for row in measure(args.work, size, args.years)]
    print(f"{'SIZE':>6}  {'layout':<30}{'shards':>7}{'MB':>9}{'seconds':>9}{'MB/s':>9}{'of raw':>8}{'peak RSS MB':>13}")
    for r in rows:
        raw = next(x for x in rows if x["size"] == r["size"] and x["shards"] is None)
        print(f"{r['size']:>6g}  {r['layout']:<30}{r['shards'] or '':>7}{r['mb']:>9}{r['seconds']:>9}{r['mb_per_s']:>9}"
              f"{r['mb_per_s'] / raw['mb_per_s']:>8.0%}{r['peak_rss_mb'] or '':>13}")
    small, large = (min(rows, key=lambda r: r["size"])["size"], max(rows, key=lambda r: r["size"])["size"])
    for layout in ("one shard", "many shards"):
        a, b = (next(r for r in rows if r["size"] == s and r["layout"] == layout) for s in (small, large))
        print(f"{layout}: input x{b['mb'] / a['mb']:.1f} -> peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "build.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
