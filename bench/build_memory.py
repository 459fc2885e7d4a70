"""Peak memory of a build as the input grows: the demo at SIZE 1 and 4 (4x the bytes).

    python bench/build_memory.py [--sizes 1 4] [--years 3] [--work /tmp/canonstore-bench]

Each build runs in its own process; its peak RSS (ru_maxrss) is reported next to the input size.
A streaming build should stay flat: memory is bounded by a few blocks of `storage.shard_mb`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RECIPE = """name: bench
sources: [raw/*.nc]
static: [lsm, orography]
splits: {{train: [2000, {last_train}], val: [{val}, {val}], test: [{test}, {test}], embargo: 4}}
storage: {{shard_mb: 64}}
"""


def measure(work: Path, size: float, years: int) -> dict:
    folder = work / f"size-{size:g}"
    subprocess.run([sys.executable, "-m", "canonstore", "demo-data", str(folder / "raw"), "--size", str(size),
                    "--years", str(years)], check=True, capture_output=True)
    last = 2000 + years - 1
    (folder / "bench.yaml").write_text(RECIPE.format(last_train=last - 2, val=last - 1, test=last))
    code = ("import resource, sys; from canonstore.preprocess import build; "
            f"build({str(folder / 'bench.yaml')!r}, {str(folder / 'bench.zarr')!r}, force=True, progress=False); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - began
    input_mb = sum(p.stat().st_size for p in (folder / "raw").glob("*.nc")) / 1e6
    return {"size": size, "input_mb": round(input_mb, 1), "peak_rss_mb": round(int(out.split()[-1]) / 1024, 1),
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1, 4])
    parser.add_argument("--years", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/canonstore-bench"))
    args = parser.parse_args()
    rows = [measure(args.work, s, args.years) for s in args.sizes]
    print(f"{'SIZE':>6}{'input MB':>12}{'peak RSS MB':>14}{'seconds':>10}")
    for r in rows:
        print(f"{r['size']:>6g}{r['input_mb']:>12}{r['peak_rss_mb']:>14}{r['seconds']:>10}")
    base = rows[0]
    for r in rows[1:]:
        print(f"SIZE {r['size']:g} vs {base['size']:g}: input x{r['input_mb'] / base['input_mb']:.2f}, "
              f"peak RSS x{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}")
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "build_memory.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
