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
sys.path.insert(0, str(HERE.parent))  # bench/pagecache.py
from pagecache import evict, files_of, read_all  # noqa: E402

from data import SIZES, layout, write_size  # noqa: E402

CANON = Path(sys.executable)
ANEMOI = HERE.parent / ".venv-peers" / "bin" / "python"  # anemoi-datasets, xbatcher (zarr 2)
ZARR3 = HERE.parent / ".venv-peers-zarr3" / "bin" / "python"  # zarr-python 3 (Python 3.11: 3.1.x), zarrs, tensorstore
PY312 = HERE.parent / ".venv-peers-py312" / "bin" / "python"  # Python >= 3.12: zarr-python 3.4, insitubatch
MLLAM = HERE.parent / ".venv-peers-mllam" / "bin" / "python"  # mllam-data-prep (the build side only)
# row: (python, which files it reads: a key of the plan and of `sets` in bench_size)
ROWS = {
    "canonstore-batch": (CANON, "store"),
    "canonstore-shards": (CANON, "store_shards"),
    "canonstore-zstd": (CANON, "store_zstd"),
    "canonstore-blosc": (CANON, "store_blosc"),
    "canonstore-dataloader": (CANON, "store"),
    "anemoi": (ANEMOI, "anemoi"),
    "anemoi-fork": (ANEMOI, "anemoi"),
    "xbatcher": (ANEMOI, "raw"),
    "xbatcher-chunked": (ANEMOI, "raw"),
    "zarr-python": (ZARR3, "store"),
    "zarr-python-oindex": (ZARR3, "store"),
    "zarrs": (ZARR3, "store"),
    "tensorstore": (ZARR3, "store"),
    "zarr34-oindex": (PY312, "store"),
    "zarr34-fused": (PY312, "store"),
    "insitubatch": (PY312, "store"),
    "insitubatch-shards": (PY312, "store_shards"),
    "netcdf-xarray": (CANON, "raw"),
    "netcdf4-batch": (CANON, "raw"),
    "memcpy": (CANON, "store"),
}
# rows.py's name of a row run by another venv under another name here (same code, newer zarr-python)
ROW_CODE = {"zarr34-oindex": "zarr-python-oindex", "zarr34-fused": "zarr-python-fused"}
# the builds: tool -> (python whose venv has its command, command after the python's bin/, recipe)
BUILDS = {
    "canonstore": (CANON, ["canonstore", "build", "canonstore.yaml", "--out", "canonstore.zarr"]),
    "canonstore-shards": (CANON, ["canonstore", "build", "canonstore-shards.yaml", "--out", "canonstore-shards.zarr"]),
    "canonstore-zstd": (CANON, ["canonstore", "build", "canonstore-zstd.yaml", "--out", "canonstore-zstd.zarr"]),
    "canonstore-blosc": (CANON, ["canonstore", "build", "canonstore-blosc.yaml", "--out", "canonstore-blosc.zarr"]),
    "anemoi": (ANEMOI, ["anemoi-datasets", "create", "anemoi.yaml", "anemoi.zarr"]),
    "mllam-data-prep": (MLLAM, ["python", "-m", "mllam_data_prep", "mllam.yaml", "-o", "mllam-data-prep.zarr"]),
}
KEEP = {
    "canonstore",
    "canonstore-shards",
    "canonstore-zstd",
    "canonstore-blosc",
    "anemoi",
}  # read by the rows; the others are removed


# -- files and the page cache ---------------------------------------------------------------------------
def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in files_of(path))


# -- measured commands ----------------------------------------------------------------------------------
RSS_LIMIT = 12e9  # a build whose process tree passes this is killed: the machine (24 GB) is shared


def run_measured(cmd: list, cwd=None, rss_limit: float = RSS_LIMIT) -> dict:
    """Run `cmd`: wall time and the peak RSS of its process tree (sampled every 50 ms); the tree is
    killed when its RSS passes `rss_limit` (`killed_at_rss` in the result)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    peak, killed = [0], [False]

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while proc.poll() is None:
            rss = 0
            tree = [root]
            with contextlib.suppress(psutil.Error):  # a child may end while it is listed
                tree += root.children(recursive=True)
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            peak[0] = max(peak[0], rss)
            if rss > rss_limit:
                killed[0] = True
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    thread.join()
    return {
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(peak[0] / 1e6, 1),
        "killed_at_rss": killed[0],
        "stdout": out,
        "stderr": err,
    }


def zarr_dtype(array: Path) -> str | None:
    """The dtype of a Zarr array (v3 or v2 metadata), read from its JSON; None if there is none."""
    for name, key in (("zarr.json", "data_type"), (".zarray", "dtype")):
        if (array / name).exists():
            return str(json.loads((array / name).read_text()).get(key))
    return None


def build(where: Path) -> dict:
    """Every build of one size's raw files, each timed once (kept in builds.json beside them: a build is
    redone only when its result or its store is missing). A tool whose venv is missing is skipped."""
    done = where / "builds.json"
    results = json.loads(done.read_text()) if done.exists() else {}
    for tool, (python, cmd) in BUILDS.items():
        out = where / f"{tool}.zarr"
        if tool in results and ("skipped" in results[tool] or out.exists() or tool not in KEEP):
            continue
        if not python.exists():
            results[tool] = {"skipped": f"{python} not found: run `make bench-peers` (it installs the peers)"}
            continue
        shutil.rmtree(out, ignore_errors=True)
        read_all([where / "raw"])  # every build starts from a warm page cache
        print(f"  build {where.name} with {tool} ...", flush=True)
        got = run_measured([python.parent / cmd[0], *cmd[1:]] if cmd[0] != "python" else [python, *cmd[1:]], cwd=where)
        if got["rc"] and tool in KEEP:
            raise SystemExit(f"{tool} build of {where} failed:\n{got['stderr'][-3000:]}")
        if got["rc"]:  # a build that no row reads: the table says it failed, and why
            shutil.rmtree(out, ignore_errors=True)
            lines = got["stderr"].strip().splitlines()
            why = (
                f"killed when its RSS passed {RSS_LIMIT / 1e9:.0f} GB"
                if got["killed_at_rss"]
                else (lines[-1] if lines else f"exit {got['rc']}")
            )
            results[tool] = {"skipped": f"failed after {got['wall_s']} s: {why}", "peak_rss_mb": got["peak_rss_mb"]}
            done.write_text(json.dumps(results, indent=1) + "\n")
            continue
        results[tool] = {
            "wall_s": got["wall_s"],
            "peak_rss_mb": got["peak_rss_mb"],
            "disk_mb": round(disk_bytes(out) / 1e6, 1),
            "dtype": zarr_dtype(out / ("state" if tool == "mllam-data-prep" else "data")),
        }
        if tool not in KEEP:
            shutil.rmtree(out)
        done.write_text(json.dumps(results, indent=1) + "\n")
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
        "store_shards": str((where / "canonstore-shards.zarr").resolve()),
        "store_zstd": str((where / "canonstore-zstd.zarr").resolve()),
        "store_blosc": str((where / "canonstore-blosc.zarr").resolve()),
        "train_last": int(dataset.times.max()),  # the last step t of a train window (t, t + 1)
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
        "warm_up_s": getattr(args, "warm_up", 0.0),
        "passes": 50,
        "batches": batches,
        "sample_mb": round(int(np.prod(store.shape[1:])) * 4 / 1e6, 3),
    }
    path = where / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def cold_reads_of(sets: dict, names: list, repeats: int) -> dict:
    """The disk's limits beside the cold rows: each file set the rows `names` read, read from an evicted page cache
    sequentially and with O_DIRECT, the median of `repeats` runs. Empty without cold rows (`--cold-repeats 0`)."""
    cold_reads = {}
    for name, path in sets.items():
        if not repeats or not any(ROWS[row][1] == name for row in names):
            continue
        cold_reads[name] = {}
        for kind in ("sequential", "direct"):
            runs = []
            for _ in range(repeats):
                evict(sets.values())
                runs.append(read_all([path], direct=kind == "direct"))
            cold_reads[name][kind] = median_run(runs, "mb_per_s")
    return cold_reads


def run_row(plan: Path, row: str, mode: str) -> dict:
    python, _ = ROWS[row]
    if not python.exists():
        why = " (and a Python >= 3.12: PEERS_PYTHON312)" if python == PY312 else ""
        return {
            "row": row,
            "mode": mode,
            "error": f"{python} not found: run `make bench-peers` (it installs the peers{why})",
        }
    done = subprocess.run(
        [python, HERE / "rows.py", plan, ROW_CODE.get(row, row), mode, row],
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


def median(values) -> float:
    return float(np.median(values))


def compare_first_batches(where: Path) -> dict:
    """Max |difference| of each row's first batch from canonstore's batch path (same samples, same order)."""
    if not (where / "first-canonstore-batch-x.npy").exists():
        return {}
    canon = {k: np.load(where / f"first-canonstore-batch-{k}.npy") for k in "xy"}
    diffs = {}
    for row in ROWS:
        paths = {k: where / f"first-{row}-{k}.npy" for k in "xy"}
        if row == "canonstore-batch" or not all(p.exists() for p in paths.values()):
            continue
        got = {k: np.load(p) for k, p in paths.items()}
        ref = canon
        steps = where / f"first-{row}-t.npy"
        if steps.exists():  # a row in its own order: canonstore's store at that row's steps
            from canonstore import open_store

            t = np.load(steps)
            array = open_store(where / "canonstore.zarr").array
            ref = {"x": np.asarray(array[t]), "y": np.asarray(array[t + 1])}
            steps.unlink()
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
    sets = {
        "store": where / "canonstore.zarr",
        "store_shards": where / "canonstore-shards.zarr",
        "store_zstd": where / "canonstore-zstd.zarr",
        "store_blosc": where / "canonstore-blosc.zarr",
        "anemoi": where / "anemoi.zarr",
        "raw": where / "raw",
    }
    names = [row for row in ROWS if not args.rows or row in args.rows]
    runs = {}  # (row, mode) -> runs, interleaved: every row once per round, `repeats` rounds
    for mode, repeats in (("warm", args.repeats), ("cold", args.cold_repeats)):
        for round_ in range(repeats):
            for row in names:
                if mode == "cold" and row == "memcpy":
                    continue
                failed = [r for r in runs.get((row, mode), []) if "error" in r]
                if failed:  # an error repeats itself: run it once
                    continue
                reads = ROWS[row][1]
                if mode == "warm":
                    read_all([sets[reads]])
                else:  # cold is noisy on a VM (the host caches too): the median of the evicted runs
                    evict(sets.values())
                got = run_row(plan, row, mode)
                runs.setdefault((row, mode), []).append(got)
                shown = f"{got['samples_per_s']:>10.1f} samples/s" if "error" not in got else got["error"]
                print(f"  {size} {mode:<5}{row:<22}{round_ + 1}/{repeats} {shown}", flush=True)
    rows = []
    for row in names:
        for mode in ("warm", "cold"):
            if (row, mode) in runs:
                rows.append({**median_run(runs[(row, mode)]), "reads": ROWS[row][1]})
    cold_reads = cold_reads_of(sets, names, args.cold_repeats)
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
            # round by round (the rows ran interleaved): the spread of the ratio
            pairs = [a / b for a, b in zip(ours[mode].get("repeats", []), r.get("repeats", [])) if b]
            if pairs:
                r["canonstore_x_range"] = [round(min(pairs), 2), round(max(pairs), 2)]
        if mode == "warm" and memcpy:
            r["of_memcpy"] = round(r["mb_per_s"] / memcpy["mb_per_s"], 3)
        if mode == "cold":
            r["of_sequential_cold"] = round(
                r["mb_per_s"] / result["cold_reads"][r["reads"]]["sequential"]["mb_per_s"], 3
            )


def spread(r: dict, fmt: str = ".0f") -> str:
    """`median (min-max)` of a row's repeats."""
    values = r.get("repeats") or [r["samples_per_s"]]
    return (
        f"{r['samples_per_s']:.1f} ({min(values):{fmt}}-{max(values):{fmt}})"
        if len(values) > 1
        else f"{r['samples_per_s']:.1f}"
    )


def ratio(r: dict) -> str:
    if "canonstore_x" not in r:
        return ""
    low, high = r.get("canonstore_x_range", [None, None])
    return f"{r['canonstore_x']}" + (f" ({low}-{high})" if low is not None and len(r.get("repeats", [])) > 1 else "")


def print_tables(result: dict) -> None:
    shape = "x".join(map(str, result["shape"]))
    print(f"\n### {shape} ({result['sample_mb']} MB a sample), batch {result['batch']}, {result['workers']} workers\n")
    print(
        "| row | warm samples/s, median (min-max) | warm MB/s | of memcpy | cold samples/s, median (min-max) "
        "| of sequential cold read | canonstore x warm | canonstore x cold |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    by = {}
    for r in result["rows"]:
        by.setdefault(r["row"], {})[r["mode"]] = r
    for row, modes in by.items():
        w, c = modes.get("warm", {}), modes.get("cold", {})
        if "error" in w:
            print(f"| {row} | failed: {w['error'][:120]} | | | | | | |")
            continue
        if not c:
            cold = ("", "")
        elif "error" in c:
            cold = (f"failed: {c['error'][:60]}", "")
        else:
            cold = (spread(c), f"{c['of_sequential_cold']:.0%}")
        of_memcpy = format(w["of_memcpy"], ".0%") if "of_memcpy" in w else ""
        print(
            f"| {row} | {spread(w)} | {w['mb_per_s']:.0f} | {of_memcpy} | {cold[0]} | {cold[1]} "
            f"| {ratio(w)} | {ratio(c) if c and 'error' not in c else ''} |"
        )
    for row, modes in by.items():
        extra = {
            k: v
            for k, v in modes.get("warm", {}).items()
            if k
            in ("shards", "shard_steps", "train_shards", "val_kept_out", "cache_budget_mb", "store_mb", "max_rss_mb")
        }
        if "shards" in extra:  # insitubatch: what it did with the shards and its cache
            print(f"\n{row}: {extra}")
    reads = result["cold_reads"]
    print(
        "\ncold reads of the files, MB/s (sequential through the page cache / O_DIRECT): "
        + ", ".join(f"{k} {v['sequential']['mb_per_s']:.0f} / {v['direct']['mb_per_s']:.0f}" for k, v in reads.items())
    )
    builds = result["builds"]
    print(f"\nbuilds of the raw files ({builds.get('raw_mb')} MB), each from a warm page cache:")
    for tool, b in builds.items():
        if tool == "raw_mb":
            continue
        if "skipped" in b:
            print(f"  {tool}: skipped: {b['skipped']}")
        else:
            print(
                f"  {tool}: {b['wall_s']} s, {b['peak_rss_mb']} MB peak RSS, {b['disk_mb']} MB on disk, "
                f"{b.get('dtype')}"
            )
    print(f"first batch, max |row - canonstore|: {result['first_batch_max_abs_diff']}")
    print(f"anemoi's statistics vs canonstore's (same period): {result['anemoi_stats_vs_canonstore']}")


def merge(earlier: dict, later: dict) -> dict:
    """One size's results from two runs: the later run's rows, and the earlier run's other rows (each row
    keeps `run`, the run it came from, and its ratios to that run's own canonstore-batch)."""
    again = {(r["row"], r["mode"]) for r in later["rows"]}
    for k, result in enumerate((earlier, later)):
        for r in result["rows"]:
            r.setdefault("run", result["runs"][0] if k else earlier.get("runs", ["earlier"])[0])
    kept = [r for r in earlier["rows"] if (r["row"], r["mode"]) not in again]
    order = list(ROWS)
    return {
        **later,
        "rows": sorted(kept + later["rows"], key=lambda r: (order.index(r["row"]), r["mode"] == "cold")),
        "cold_reads": {**earlier["cold_reads"], **later["cold_reads"]},
        "first_batch_max_abs_diff": {**earlier["first_batch_max_abs_diff"], **later["first_batch_max_abs_diff"]},
        "runs": earlier.get("runs", []) + later["runs"],
    }


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
    parser.add_argument(
        "--warm-up", type=float, default=1.0, help="seconds of batches (at least 2) before a warm row is timed"
    )
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per row, rows interleaved (median kept)")
    parser.add_argument("--cold-repeats", type=int, default=3, help="evicted runs per cold row (the median is kept)")
    parser.add_argument("--only-build", action="store_true", help="write the raw files and build them, no rows")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="only these rows (default: all)")
    parser.add_argument("--data", type=Path, default=Path("data/peers"))
    parser.add_argument("--results", type=Path, default=Path("bench/results/peers"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add to the results already in --results (other sizes kept; a size's rows not run again kept, "
        "with their ratios to that earlier run's canonstore-batch)",
    )
    parser.add_argument(
        "--tables", action="store_true", help="print the tables of the results in --results, run nothing"
    )
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    saved = args.results / "peers.json"
    if args.tables:
        for result in json.loads(saved.read_text()):
            print_tables(result)
        return
    results = json.loads(saved.read_text()) if args.merge and saved.exists() else []
    for size in args.sizes:
        if args.only_build:
            print(json.dumps(build(write_size(args.data, size)), indent=1))
            continue
        result = bench_size(size, args)
        add_ratios(result)
        result["runs"] = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
        earlier = next((r for r in results if r["size"] == size), None)
        if earlier is not None:
            result = merge(earlier, result)
            results.remove(earlier)
        print_tables(result)
        plot(result, args.results / f"peers-{size}.png")
        results.append(result)
        results.sort(key=lambda r: list(SIZES).index(r["size"]))
        saved.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.results / 'peers.json'} and peers-<size>.png")


if __name__ == "__main__":
    main()
