"""Appending one year to a 5-year demo store vs rebuilding the 6-year store, in one run.

    python bench/append.py [--size 1] [--shard-mb 64] [--work /tmp/canonstore-bench-append]

Builds years 2000-2004 (train 2000-2002, val 2003, test 2004 onward), moves the recipe's time.end
one year later and times `canonstore append`; then times a forced full build of the same recipe,
and checks that both wrote the same data files. Each step runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RECIPE = """name: append
sources: [raw/*.nc]
static: [lsm, orography]
time: {{end: {end}}}
splits: {{train: [2000, 2002], val: [2003, 2003], test: [2004, 2010], embargo: 4}}
storage: {{shard_mb: {shard_mb}}}
"""


def timed(*args: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "canonstore", *args], check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1)
    parser.add_argument("--shard-mb", type=float, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/canonstore-bench-append"))
    args = parser.parse_args()
    raw, recipe = args.work / "raw", args.work / "append.yaml"
    if not (raw / ".complete").exists():
        subprocess.run(
            [sys.executable, "-m", "canonstore", "demo-data", str(raw), "--size", str(args.size), "--years", "6"],
            check=True,
            capture_output=True,
        )
    recipe.write_text(RECIPE.format(end="2004-12-31", shard_mb=args.shard_mb))
    five = timed("build", str(recipe), "--out", str(args.work / "a.zarr"), "--force", "--quiet")
    recipe.write_text(RECIPE.format(end="2005-12-31", shard_mb=args.shard_mb))
    append = timed("append", str(args.work / "a.zarr"), "--quiet")
    full = timed("build", str(recipe), "--out", str(args.work / "b.zarr"), "--force", "--quiet")
    files = [json.loads((args.work / s / "manifest.json").read_text())["files"] for s in ("a.zarr", "b.zarr")]
    same = {k: v for k, v in files[0].items() if k.startswith("data/c/")} == {
        k: v for k, v in files[1].items() if k.startswith("data/c/")
    }
    print(f"{'step':<34}{'seconds':>9}")
    print(f"{'build 5 years':<34}{five:>9.2f}")
    print(f"{'append year 6':<34}{append:>9.2f}")
    print(f"{'full build of 6 years':<34}{full:>9.2f}")
    print(f"append / full build = {append / full:.2f}; data files identical: {same}")


if __name__ == "__main__":
    main()
