"""Zarr sources, local and on S3: build times against NetCDF, and bytes fetched for a subset against bytes selected.

    python bench/remote.py [--days 120] [--nlat 32 --nlon 64] [--repeats 3] [--work /tmp/canonstore-bench-remote]
    python bench/remote.py --pull-only --days 240 --nlat 64 --nlon 128     # the pull rows only (440 MB)
    python bench/remote.py --pull-only --server s3rver                     # the same against s3rver (Node)

Writes WeatherBench 2-shaped data (2m_temperature and geopotential on 13 levels, 6-hourly, chunks of 16 steps x
1 level) as Zarr v3 and as NetCDF, starts moto's S3 server in its own process on 127.0.0.1 and uploads the Zarr
store to it, then builds the same recipe from each, interleaved, `--repeats` times (the median is reported);
and builds a subset (3 of 13 levels, the middle quarter of the days) from S3, counting every byte fetched
against the bytes of the chunks the subset selects; then publishes the local Zarr build to S3 and times `pull`
against a plain parallel GET of the same objects into files (throughput, median of `--repeats` interleaved
runs, each into an empty folder after an untimed os.sync). Results: bench/results/remote.json (`--pull-only`:
one local build, the pull rows, remote-pull.json).

`--server s3rver` (with `--pull-only`) times the pull rows against s3rver instead of moto: a Node S3 server that
serves a ranged GET from the file (moto reads the whole object for every range). It is installed once with
`npm install --prefix bench/.s3rver s3rver@3.7.1` (gitignored; `make bench-remote-s3rver` does it). s3rver has no
conditional PUT and no server-side copy that canonstore's publish relies on, so the store is uploaded there
object by object (the same keys and bytes as a publish leaves), and its results go to remote-pull-s3rver.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from canonstore.atomic import make_staging  # noqa: E402
from canonstore.preprocess import build  # noqa: E402
from canonstore.preprocess.zarr_source import READS  # noqa: E402
from canonstore.remote import listing  # noqa: E402
from tests.helpers import write_recipe  # noqa: E402
from tests.wb2 import CREDENTIALS, as_netcdf, free_port, upload, wb2_dataset, write_zarr  # noqa: E402

LEVELS13 = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
CHUNK = 16
WB2 = ["2m_temperature", "geopotential"]


def _splits(days: int) -> dict:
    import pandas as pd

    day = pd.Timestamp("2000-01-01")
    edges = [day + pd.Timedelta(days=int(days * f)) for f in (0, 0.7, 0.85, 1.0)]
    fmt = [e.strftime("%Y-%m-%d") for e in edges]
    after = [(e - pd.Timedelta(days=1)).strftime("%Y-%m-%d") for e in edges]
    return {"by": "dates", "train": [fmt[0], after[1]], "val": [fmt[1], after[2]], "test": [fmt[2], after[3]]}


def _timed(recipe: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    build(recipe, out, progress=False, force=True)
    return time.perf_counter() - began


S3RVER = ROOT / "bench" / ".s3rver" / "node_modules" / ".bin" / "s3rver"


def _start_s3(work: Path, kind: str = "moto") -> subprocess.Popen:
    """An S3 server on 127.0.0.1 in its own process, with the bucket `bench`; the AWS_* variables point at it."""
    port = free_port()
    if kind == "s3rver":
        if not S3RVER.exists():
            raise SystemExit(f"{S3RVER} is missing: npm install --prefix bench/.s3rver s3rver@3.7.1")
        # its objects under --work, which make_staging emptied at the start of this run: a fresh bucket
        command = [str(S3RVER), "-d", str(work / "s3rver"), "-a", "127.0.0.1", "-p", str(port), "-s"]
        command += ["--configure-bucket", "bench"]
    else:
        command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=(work / f"{kind}.log").open("w"))
    keys = (
        CREDENTIALS
        if kind == "moto"
        else {**CREDENTIALS, "AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER"}
    )
    os.environ.update(keys, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ALLOW_HTTP="true")
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/" + ("moto-api/" if kind == "moto" else "")).close()
            break
        except urllib.error.HTTPError:  # s3rver answers its root with an error page: it is up
            break
        except OSError:
            time.sleep(0.1)
    if kind == "moto":
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/bench", method="PUT")).close()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--nlat", type=int, default=32)
    parser.add_argument("--nlon", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pull-only", action="store_true", help="build once locally and time only the pull rows")
    parser.add_argument(
        "--server", choices=["moto", "s3rver"], default="moto", help="the S3 server of the pull rows (--pull-only)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/canonstore-bench-remote"))
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.server != "moto" and not args.pull_only:
        parser.error("--server s3rver times the pull rows only: add --pull-only")
    warnings.filterwarnings("ignore", message=".*onsolidated metadata.*")
    # --work may name any folder: only an empty one or one this bench marked before is (re)used, never another
    make_staging(args.work, "bench-remote")
    ds = wb2_dataset(steps=4 * args.days, nlat=args.nlat, nlon=args.nlon, levels=LEVELS13)
    local = write_zarr(ds, args.work / "era5.zarr", time_chunk=CHUNK)
    if args.pull_only:
        return _pull_only(args, local)
    as_netcdf(wb2_dataset(steps=4 * args.days, nlat=args.nlat, nlon=args.nlon, levels=LEVELS13), args.work / "era5.nc")
    server = _start_s3(args.work)
    try:
        url = upload(local, "s3://bench/wb2/era5.zarr")
        splits = _splits(args.days)
        recipes = {
            "netcdf": write_recipe(args.work, name="nc", sources=["era5.nc"], variables=["t2m", "z"], splits=splits),
            "zarr-local": write_recipe(args.work, name="zl", sources=[str(local)], variables=WB2, splits=splits),
            "zarr-s3": write_recipe(args.work, name="zs", sources=[url], variables=WB2, splits=splits),
        }
        times: dict[str, list[float]] = {k: [] for k in recipes}
        for _ in range(args.repeats):  # interleaved: each kind sees the same machine load
            for kind, recipe in recipes.items():
                times[kind].append(_timed(recipe, args.work / f"{kind}.zarr"))
        subset = _subset(args, local, url)
        pulled = _pull(args, args.work / "zarr-local.zarr")
    finally:
        server.terminate()
        server.wait()
    median = {k: statistics.median(v) for k, v in times.items()}
    nbytes = sum(size for _, size in listing(local))
    rows = {
        "data": f"{4 * args.days} steps x (1 + 13 levels) x {args.nlat}x{args.nlon} float32, chunks of {CHUNK} steps",
        "source_mb": round(nbytes / 1e6, 1),
        "repeats": args.repeats,
        "seconds": {k: [round(s, 3) for s in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 3) for k, v in median.items()},
        "zarr_local_over_netcdf": round(median["zarr-local"] / median["netcdf"], 2),
        "zarr_s3_over_zarr_local": round(median["zarr-s3"] / median["zarr-local"], 2),
        "subset": subset,
        "pull": pulled,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "remote.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


def _pull_only(args, local: Path) -> None:
    """One build from the local Zarr source, then the pull rows alone: bench/results/remote-pull.json."""
    recipe = write_recipe(args.work, name="zl", sources=[str(local)], variables=WB2, splits=_splits(args.days))
    _timed(recipe, args.work / "zarr-local.zarr")
    server = _start_s3(args.work, args.server)
    try:
        rows = {"data": f"{4 * args.days} steps x (1 + 13 levels) x {args.nlat}x{args.nlon}", "repeats": args.repeats}
        rows["server"] = args.server
        rows["pull"] = _pull(args, args.work / "zarr-local.zarr", publish=args.server == "moto")
    finally:
        server.terminate()
        server.wait()
    args.results.mkdir(parents=True, exist_ok=True)
    name = "remote-pull.json" if args.server == "moto" else f"remote-pull-{args.server}.json"
    (args.results / name).write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


def _subset(args, local: Path, url: str) -> dict:
    """3 of 13 levels and the middle quarter of the days, from S3: bytes fetched vs the selected chunks' bytes."""
    import pandas as pd

    levels = [250, 500, 850]
    first = pd.Timestamp("2000-01-01") + pd.Timedelta(days=args.days * 3 // 8)
    last = first + pd.Timedelta(days=args.days // 4) - pd.Timedelta(hours=6)
    steps = range(4 * args.days * 3 // 8 * 1, 4 * args.days * 3 // 8 + 4 * (args.days // 4))
    recipe = write_recipe(
        args.work,
        name="sub",
        sources=[url],
        variables=WB2,
        levels={"geopotential": levels},
        time={"start": first.strftime("%Y-%m-%dT%H:%M"), "end": last.strftime("%Y-%m-%dT%H:%M")},
        splits={"by": "index", "train": [0, len(steps) // 2], "test": [len(steps) // 2 + 1, len(steps) - 1]},
    )
    chunks = sorted({s // CHUNK for s in steps})
    sizes = dict(listing(local))
    selected = {f"2m_temperature/c/{t}/0/0" for t in chunks}
    selected |= {f"geopotential/c/{t}/{LEVELS13.index(v)}/0/0" for t in chunks for v in levels}
    READS.reset()
    seconds = _timed(recipe, args.work / "sub.zarr")
    fetched_chunks = {k for k in READS.per_key if "/c/" in k and k.split("/")[0] in WB2}
    return {
        "selection": f"3 of 13 levels, {len(steps)} of {4 * args.days} steps",
        "bytes_selected_chunks": sum(sizes[k] for k in selected),
        "bytes_fetched": READS.bytes,
        "bytes_fetched_data_chunks": sum(sizes[k] for k in fetched_chunks),
        "bytes_source": sum(sizes.values()),
        "requests": READS.requests,
        "chunks_fetched_twice": sum(1 for k in fetched_chunks if READS.per_key[k] > 1),
        "chunks_outside_selection": len(fetched_chunks - selected),
        "seconds": round(seconds, 3),
    }


def _timed_run(run, out: Path) -> float:
    """Seconds of `run(out)` into an empty `out`, started with the disk settled (os.sync, untimed): the plain GET
    leaves its files unsynced, and pull's one syncfs would otherwise write them back within pull's time."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    began = time.perf_counter()
    run(out)
    return time.perf_counter() - began


def _pull(args, store: Path, publish: bool = True) -> dict:
    """`pull` of a published store vs a plain parallel GET of the same objects into files, interleaved.
    `publish=False`: the store's files uploaded as they are (a server without conditional PUT or copies)."""
    from canonstore.atomic import MARKER
    from canonstore.objects import LIMIT, Objects, bounded, run_async
    from canonstore.preprocess.pull import pull
    from canonstore.preprocess.upload import publish_url

    url = "s3://bench/stores/era5.zarr"
    objects = Objects(url)
    if publish:
        publish_url(store, url)
    else:  # what a publish leaves: every file of the store under its key, root zarr.json included
        files = [p for p in sorted(store.rglob("*")) if p.is_file() and p.name != MARKER]
        objects.put_files([(p.relative_to(store).as_posix(), p) for p in files])
    sizes = objects.list()
    nbytes = sum(sizes.values())
    largest = max(sizes.values())

    def plain(out: Path) -> None:  # whole-object GETs, LIMIT in flight, written to files: no hashing, no staging
        async def one(key: str) -> None:
            import obstore

            data = await (await obstore.get_async(objects.store, key)).bytes_async()
            (out / key).parent.mkdir(parents=True, exist_ok=True)
            (out / key).write_bytes(data)

        run_async(bounded(sorted(sizes), one, LIMIT))

    # pull_whole_objects: one request per object, however large (pull splits objects above its WHOLE_MB into
    # ranged parts): a server that reads the whole object for each range, as moto does, pays it once per part
    run = {
        "pull": lambda out: pull(url, out, progress=False),
        "pull_whole_objects": lambda out: pull(url, out, progress=False, whole_mb=1e9),
        "plain_get": plain,
    }
    runs: dict[str, list[float]] = {kind: [] for kind in run}
    for _ in range(args.repeats):  # interleaved, each into an empty folder
        for kind in runs:
            runs[kind].append(_timed_run(run[kind], args.work / f"{kind}.zarr"))
    median = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "objects": len(sizes),
        "mb": round(nbytes / 1e6, 1),
        "largest_object_mb": round(largest / 1e6, 1),
        "seconds": {k: [round(s, 3) for s in v] for k, v in runs.items()},
        "mb_per_s": {k: round(nbytes / 1e6 / v, 1) for k, v in median.items()},
        "pull_over_plain_get": round(median["plain_get"] / median["pull"], 2),
        "pull_over_plain_get_per_run": [round(g / p, 2) for g, p in zip(runs["plain_get"], runs["pull"])],
        "whole_objects_over_plain_get": round(median["plain_get"] / median["pull_whole_objects"], 2),
    }


if __name__ == "__main__":
    main()
