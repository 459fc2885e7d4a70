"""Time saved by `canonstore build --resume` after a kill -9 late in the write pass.

    python bench/resume.py [--recipe recipes/demo.yaml] [--at 0.75]

Runs, side by side: a full build; a build killed (SIGKILL) once `--at` of the shards are written (resume
goes on per shard: use a recipe of several shards); the resumed build. Prints seconds for each and the
resumed/full ratio. Needs the recipe's inputs (`make data` for the demo).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from canonstore import open_store
from canonstore.formats.manifest import data_checksums, read_manifest
from canonstore.preprocess.staging import staging_path, written_shards


def run_build(recipe: Path, out: Path, *extra: str, kill_at: float | None = None, shards: int = 0) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "canonstore", "build", str(recipe), "--out", str(out), "--quiet", *extra],
        stdout=subprocess.DEVNULL,
    )
    staging = staging_path(out)
    while proc.poll() is None:
        if kill_at is not None and len(written_shards(staging)) >= kill_at * shards:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    if proc.wait() not in (0, -signal.SIGKILL):
        sys.exit(f"build failed ({proc.returncode})")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/demo.yaml"))
    parser.add_argument("--at", type=float, default=0.75, help="fraction of shards written when killed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="data") as tmp:
        full_out, out = Path(tmp, "full.zarr"), Path(tmp, "resumed.zarr")
        full = run_build(args.recipe, full_out)
        shards = open_store(full_out).attrs["layout"]["shards"]
        killed = run_build(args.recipe, out, kill_at=args.at, shards=shards)
        resumed = run_build(args.recipe, out, "--resume")
        same = data_checksums(read_manifest(out)) == data_checksums(read_manifest(full_out))
        shutil.rmtree(full_out)
    print(f"{'build':<28}{'seconds':>9}")
    print(f"{'full, uninterrupted':<28}{full:>9.2f}")
    print(f"{f'killed at {args.at:.0%} of shards':<28}{killed:>9.2f}")
    print(f"{'resumed (--resume)':<28}{resumed:>9.2f}")
    print(
        f"resumed / full = {resumed / full:.2f}; killed + resumed / full = {(killed + resumed) / full:.2f}; "
        f"data identical to the full build: {same}"
    )


if __name__ == "__main__":
    main()
