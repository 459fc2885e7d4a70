"""`bench/loader.py` runs end to end on a tiny store and writes the rows `make bench` promises."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from canonstore import open_store
from canonstore.preprocess import build
from tests.helpers import ROOT, demo_recipe

pytestmark = pytest.mark.slow  # runs the benchmarks on a tiny store

BENCH = ROOT / "bench" / "loader.py"


def _bench(store, tmp_path, *args):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            str(store),
            "--seconds",
            "0.3",
            "--warm-up",
            "0",
            "--workers",
            "1",
            "--batch-size",
            "8",
            "--no-train",
        ]
        + ["--results", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_loader_bench_writes_every_row(tiny_store, tiny_raw, tmp_path):
    one = build(
        demo_recipe(tmp_path, tiny_raw, storage={"shard_mb": 1024}),
        tmp_path / "one.zarr",
        progress=False,
    ).path
    done = _bench(tiny_store, tmp_path, "--one-shard", str(one))
    rows = json.loads((tmp_path / "loader.json").read_text())
    assert [r["loader"] for r in rows] == [
        "netcdf",
        "store-dataloader",
        "store-batch",
        "store-batch-1shard",
        "zarr-python",
        "memcpy-samples",
        "memcpy",
    ]
    assert rows[2]["of_memcpy_samples"] > 0 and rows[-2]["of_memcpy_samples"] == 1.0
    shards = re.search(r"store-batch over (\d+) shards / over one shard:", done.stdout)
    assert shards and int(shards.group(1)) == len(list((tiny_store / "data" / "c").iterdir())) > 1
    for row in rows:
        assert row["samples_per_s"] > 0 and row["mb_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["workers"] == 1
        assert row["warm_up_s"] == 0.0  # the command line's --warm-up reached the row's own process
    assert rows[0]["x_netcdf"] == 1.0 and rows[-1]["of_memcpy"] == 1.0
    assert (tmp_path / "loader.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "of memcpy" in done.stdout


def test_loader_bench_cold_rows_start_from_an_evicted_page_cache(tiny_store, tmp_path):
    """Also the repeated rounds end to end (2 of them: each row is a process of its own; the median of an odd
    count is checked on `median_row` below): every round and the spread beside each row."""
    _bench(tiny_store, tmp_path, "--cold", "--repeat", "2")
    rows = json.loads((tmp_path / "loader-cold.json").read_text())
    assert [r["loader"] for r in rows] == ["store-batch", "memcpy-samples", "read-seq", "read-direct"]
    assert all(r["cold"] and r["mb_per_s"] > 0 for r in rows)
    for row in rows:
        assert row["repeat"] == 2 and len(row["rounds"]) == 2
        assert row["samples_per_s"] == min(r["samples_per_s"] for r in row["rounds"])  # the lower middle
        assert row["spread"] == [
            min(r["samples_per_s"] for r in row["rounds"]),
            max(r["samples_per_s"] for r in row["rounds"]),
        ]
    assert rows[0]["of_memcpy_samples"] > 0 and rows[1]["of_memcpy_samples"] == 1.0
    data_bytes = sum(p.stat().st_size for p in (tiny_store / "data").rglob("*") if p.is_file())
    assert rows[2]["mb"] * 1e6 == pytest.approx(data_bytes, rel=1e-3)  # every shard file, start to end
    assert rows[2]["of_read_seq"] == 1.0 and rows[0]["of_read_seq"] > 0


def _loader_bench_module():
    sys.path.insert(0, str(BENCH.parent))  # the bench imports its neighbour pagecache.py
    try:
        spec = importlib.util.spec_from_file_location("bench_loader", BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH.parent))
    return module


def test_a_row_is_its_median_round_and_its_ratios_the_median_of_each_rounds_ratio():
    bench = _loader_bench_module()
    rounds = {"store-batch": (30.0, 10.0, 20.0), "memcpy-samples": (40.0, 40.0, 10.0)}
    rows = [
        bench.median_row([{"loader": name, "mode": "load", "samples_per_s": s, "mb_per_s": 2 * s} for s in runs])
        for name, runs in rounds.items()
    ]
    batch, ceiling = rows
    assert batch["samples_per_s"] == 20.0 and batch["spread"] == [10.0, 30.0] and batch["repeat"] == 3
    assert [r["samples_per_s"] for r in batch["rounds"]] == [30.0, 10.0, 20.0]  # in the order they ran
    bench.add_ratios(rows)
    # per round 0.75, 0.25, 2.0: the median of those, not a ratio of the two medians (20 / 40 = 0.5)
    assert batch["of_memcpy_samples"] == 0.75 and batch["of_memcpy_samples_spread"] == [0.25, 2.0]
    assert ceiling["of_memcpy_samples"] == 1.0


def test_peer_rows_deliver_the_same_batches_as_canonstore(tmp_path, monkeypatch):
    """bench/peers: the rows that run in canonstore's venv read the plan's samples, in its order, to float
    tolerance; a peer whose venv is missing is an error row that says how to install it."""
    import argparse

    monkeypatch.syspath_prepend(str(BENCH.parent / "peers"))
    import data
    import rows
    import run

    monkeypatch.setitem(
        data.SIZES,
        "t",
        {
            "levels": (500, 850),
            "pressure": ("z", "t"),
            "surface": ("t2m", "msl"),
            "grid": (8, 16),
            "steps": 60,
            "batch": 4,
        },
    )
    where = data.write_size(tmp_path, "t")
    assert "train: [0, 47], val: [52, 59]" in (where / "canonstore.yaml").read_text()  # 80% train, then the embargo
    assert "end: 2000-01-12T18:00:00}" in (where / "anemoi.yaml").read_text()  # statistics over train: step 47
    build(where / "canonstore.yaml", where / "canonstore.zarr", progress=False)
    plan_path = run.write_plan(where, "t", argparse.Namespace(workers=1, seconds=0.2))
    plan = json.loads(plan_path.read_text())
    assert plan["anemoi_channels"] == ["z_500", "z_850", "t_500", "t_850", "t2m", "msl"]
    steps = [t for b in plan["batches"] for t in b]  # 47 train windows, each once; drop_last leaves 3 out
    assert len(steps) == len(set(steps)) == 44 and set(steps) <= set(range(47)) and steps != sorted(steps)
    for row in ("canonstore-batch", "canonstore-dataloader", "netcdf-xarray", "netcdf4-batch"):
        result = rows.measure(plan, row, "warm", where)
        assert result["samples"] > 0 and result["mb_per_s"] > 0, result
    diffs = run.compare_first_batches(where)
    assert set(diffs) == {"canonstore-dataloader", "netcdf-xarray", "netcdf4-batch"}
    assert diffs["canonstore-dataloader"] == diffs["netcdf-xarray"] == 0.0, diffs  # float64 normalisation, as the build
    assert diffs["netcdf4-batch"] < 1e-4, diffs  # float32 normalisation: z ~ 5e4 with a std of ~400
    store = open_store(where / "canonstore.zarr")  # the reference is canonstore's own: x at the plan's steps
    np.testing.assert_array_equal(np.load(where / "first-canonstore-batch-x.npy"), store.array[plan["batches"][0]])
    np.testing.assert_array_equal(
        np.load(where / "first-canonstore-batch-y.npy"), store.array[np.add(plan["batches"][0], 1)]
    )
    run.evict([where / "canonstore.zarr"])
    cold = rows.measure(plan, "canonstore-batch", "cold", None)
    assert cold["samples"] == plan["batch"] * len(plan["batches"])  # cold: exactly one pass
    missing = run.run_row(plan_path, "anemoi", "warm") if not run.ANEMOI.exists() else {"error": "make bench-peers"}
    assert "make bench-peers" in missing["error"]


def test_remote_bench_writes_its_rows(tmp_path):
    """`bench/remote.py` on a tiny WB2-shaped set: every row, and the subset fetched only its chunks, once."""
    pytest.importorskip("moto.server")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "remote.py"), "--days", "8", "--nlat", "4", "--nlon", "8"]
        + ["--repeats", "1", "--work", str(tmp_path / "work"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "remote.json").read_text())
    assert set(rows["median_seconds"]) == {"netcdf", "zarr-local", "zarr-s3"}
    subset = rows["subset"]
    assert subset["bytes_fetched_data_chunks"] == subset["bytes_selected_chunks"] < subset["bytes_source"]
    assert subset["chunks_fetched_twice"] == subset["chunks_outside_selection"] == 0
    assert set(rows["pull"]["mb_per_s"]) == {"pull", "pull_whole_objects", "plain_get"}
    assert rows["pull"]["pull_over_plain_get"] > 0 and rows["pull"]["whole_objects_over_plain_get"] > 0


def test_build_bench_says_the_cpu_seconds_of_every_row_cluster_workers_included(tmp_path, capsys):
    """`bench/build.py` on a tiny demo: the limits, in-process builds and a LocalCluster, each with the CPU seconds
    of all its processes (what tells a CPU-bound build from a disk-bound one on 2 cores)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "build.py"), "--sizes", "0.01", "--workers", "1"]
        + ["--work", str(tmp_path / "work"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "build.json").read_text())
    assert [r["layout"].split(",")[0] for r in rows] == [
        "raw read (netCDF4",
        "durable write (pwrite+fdatasync)",
        "in-process",
        "in-process",
        "LocalCluster 1 worker",
    ]
    assert len({r["mb"] for r in rows}) == 1
    for row in rows:
        # rusage of its processes only (per GB: a 10 MB durable write takes a few ms of CPU, 0.0 s once rounded)
        assert row["cpu_s_per_gb"] > 0 and row["cores_busy"] <= os.cpu_count() * 1.2, row
        assert (row["workers_cpu_s"] is not None) == row["layout"].startswith("LocalCluster"), row
    assert 0 < rows[-1]["workers_cpu_s"] < rows[-1]["cpu_s"]  # the worker's share, the driver's beside it
    spec = importlib.util.spec_from_file_location("bench_build", ROOT / "bench" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._summary(rows + [{**row, "repeat": 1, "cpu_s_per_gb": 2 * row["cpu_s_per_gb"]} for row in rows])
    summary = capsys.readouterr().out.splitlines()
    build = next(line for line in summary if "in-process, one shard" in line).split()
    assert float(build[-2]) == pytest.approx(1.5 * rows[2]["cpu_s_per_gb"], abs=0.01)  # median of the two rounds


def test_the_remote_bench_never_deletes_a_work_folder_it_did_not_make(tmp_path):
    """--work was removed with shutil.rmtree whatever it held: `--work ~/data` would have deleted the user's data."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "remote.py"), "--days", "8", "--nlat", "4", "--nlon", "8"]
        + ["--repeats", "1", "--work", str(mine), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "not canonstore's" in done.stderr
    assert (mine / "thesis.tex").read_text() == "mine"


def test_each_timed_pull_run_starts_with_the_disk_settled(tmp_path, monkeypatch):
    """The plain GET leaves its files unsynced; pull's syncfs in the next run wrote them back within pull's time
    (about 40 ms of a 0.3 s pull of 55 MB). Each run now starts after an untimed os.sync, into an empty folder."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import remote

    calls = []
    monkeypatch.setattr(remote.os, "sync", lambda: calls.append("sync"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "left").write_text("from the previous run")
    seconds = remote._timed_run(lambda folder: calls.append(("run", folder.exists())), out)
    assert calls == ["sync", ("run", False)] and seconds >= 0


def test_compressed_layout_bench_rows_decode_to_the_stores_bytes_and_leave_the_work_folder_as_it_was(
    tiny_store, tmp_path
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "blosc-lz4.frames").write_text("a user's file of the name a codec writes")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compressed_layout.py"), str(tiny_store), "--codecs", "blosc-lz4"]
        + ["--repeat", "1", "--seconds", "0.2", "--workers", "1", "--batch-size", "4"]
        + ["--work", str(work), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "compressed-layout.json").read_text())
    assert {(r["layout"], r["cold"]) for r in rows} == {
        (layout, cold) for layout in ("uncompressed", "pread", "blosc-lz4") for cold in (True, False)
    }
    for row in rows:
        assert row["samples_per_s"] > 0 and row["of_size"] > 0 and row["of_uncompressed"] > 0
        assert row["of_size"] == 1.0 if row["layout"] in ("uncompressed", "pread") else row["of_size"] < 1.0
    assert [p.name for p in work.iterdir()] == ["blosc-lz4.frames"]  # its own folder went, the user's file stayed
    assert (work / "blosc-lz4.frames").read_text() == "a user's file of the name a codec writes"


@pytest.mark.parametrize("layout", ["many float32 shards", "one float16 shard"])
def test_every_compressed_layout_row_fills_each_batch_with_its_x_and_y_steps_and_a_thread_error_is_raised(
    tiny_store, tiny_raw, tmp_path, monkeypatch, layout
):
    """Steps across shard files (the pread offsets), one shard file, a 2-byte dtype: each row puts the
    sampler's steps t and t + 1 in x and y, bit for bit, or its ratio would compare different work."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import compressed_layout as cl

    path = tiny_store
    if layout == "one float16 shard":
        storage = {"shard_mb": 1024, "dtype": "float16"}
        path = build(demo_recipe(tmp_path, tiny_raw, storage=storage), tmp_path / "one.zarr", progress=False).path
    store = open_store(path)
    assert (store.attrs["layout"].get("shards", 1) == 1) == (layout == "one float16 shard")
    batches = cl.sampler_batches(store, 4)[:6]
    fills = {"memmap": cl.uncompressed(store), "pread": cl.preads(store, path)}
    for codec in ("blosc-lz4", "lz4"):
        frames, offsets = cl.compress(store, codec, tmp_path)
        fills[codec] = cl.decoded(frames, offsets, codec)
    for name, fill in fills.items():
        for pair in (batches[:2], batches[2:4], batches[4:]):  # one batch a thread: its buffers are not refilled
            got = cl.batches_of(fill, pair, 2, 4, store.shape[1:], store.dtype, 1)  # while they are compared
            for times, (x, y) in zip(pair, got, strict=True):  # in the sampler's order, thread by thread
                np.testing.assert_array_equal(x, store.array[times], err_msg=name)
                np.testing.assert_array_equal(y, store.array[times + 1], err_msg=name)

    def failing():
        def read(out, t):
            raise OSError(f"cannot read step {t}")

        return read

    with pytest.raises(OSError, match="cannot read step"):
        list(cl.batches_of(failing, batches, 2, 4, store.shape[1:], store.dtype, None))


def test_the_sample_copy_ceiling_copies_the_batch_loaders_own_steps(tiny_store, monkeypatch):
    """memcpy-samples (and every compressed-layout row) is the loader's ceiling only if it copies the samples the
    loader's first epoch yields, in its order: another order or split would give a ratio of different work."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from sample_batches import sampler_batches

    from canonstore.loaders import BatchLoader, StoreDataset

    store = open_store(tiny_store)
    loader = BatchLoader(StoreDataset(store, "train", lead=1), 4, seed=0, device="cpu", workers=1, drop_last=True)
    yielded = []
    for _ in loader:
        yielded.append(loader.last_steps.copy())
    expected = sampler_batches(store, 4)
    assert len(yielded) == len(expected) > 1
    for got, want in zip(yielded, expected):
        np.testing.assert_array_equal(got, want)


def test_a_warm_row_is_timed_after_its_warm_up_and_a_short_pass_is_started_again(monkeypatch):
    """A loader whose buffers are first touched in its first passes is measured after them: the warm-up takes batches
    for its seconds (at least 2) and goes on with a new pass where one ends, as the timed loop does."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from loader import warm_up

    yielded, passes = [], []

    class ThreeAPass:  # a loader whose pass is shorter than the warm-up
        def __iter__(self):
            passes.append(len(yielded))
            for k in range(3):
                yielded.append(k)
                yield k

    clock = lambda: len(yielded)  # noqa: E731 -- one second a batch
    monkeypatch.setattr("loader.time.perf_counter", clock)
    batches = ThreeAPass()
    it = warm_up(iter(batches), batches, 5)
    assert len(yielded) == 5 and passes == [0, 3]  # until 5 s had passed, the last 2 from a second pass
    assert next(it) == 2  # handed back where the warm-up stopped, not rewound
    yielded.clear(), passes.clear()
    warm_up(iter(batches), batches, 0)
    assert len(yielded) == 2  # at least 2 batches, however short the warm-up
    with pytest.raises(RuntimeError, match="no batches"):  # an empty pass fails, not starts new ones for ever
        warm_up(iter([]), [], 1)


def test_each_step_of_the_loader_gap_puts_the_loaders_samples_into_its_own_buffers(tiny_store, tmp_path, monkeypatch):
    """bench/loader_gap.py's steps differ only by what each adds: every step must copy the batches the loader's
    epoch 0 yields (in its order), pass after pass, into the same buffers each pass (new ones would pay page faults),
    the ring and gather steps rotating through their pairs; a step's ratio is the median of the rounds' ratios to
    the step before, not the ratio of the medians (as bench/loader.py's)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import loader_gap

    from canonstore.loaders import StoreDataset

    store = open_store(tiny_store)
    runs = loader_gap.passes(store, 4, 2, ring=3)
    expected = [(x.numpy().copy(), y.numpy().copy()) for x, y in runs["loader"]()]
    assert len(expected) > 6
    again = [(x.numpy().copy(), y.numpy().copy()) for x, y in runs["loader"]()]
    np.testing.assert_array_equal(np.stack([x for x, _ in again]), np.stack([x for x, _ in expected]))
    assert StoreDataset(store, "train", lead=1).static.shape[0]  # gather's x holds static fields: compared too

    def same_batch(name, got, want):
        width = want[0].shape[1] if name == "gather" else store.shape[1]  # the copies' x: the steps' channels only
        np.testing.assert_array_equal(got[0][:, :width], want[0][:, :width], err_msg=name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=name)

    for name, pairs_used in (("stream", 2), ("memcpy-samples", 2), ("ring", 6), ("gather", 6)):
        addresses = []
        for _ in range(2):
            held, seen = [], set()
            # 3 pairs a thread: while a batch is held here, its thread has at most the next one queued and fills
            # the one after; the held pair comes round again only once the next one is taken
            for (x, y), (want_x, want_y) in zip(runs[name](), expected, strict=True):
                seen.add(x.ctypes.data)
                held.append((x, y))
                if name not in ("stream", "memcpy-samples"):  # one pair, refilled while handed over (their licence)
                    same_batch(name, (x, y), (want_x, want_y))
            addresses.append(seen)
        assert len(addresses[0]) == pairs_used and addresses[0] == addresses[1], name
        if name == "stream":  # never done: its threads go on, a pass only as many of its batches
            continue
        for got, want in zip(held[-2:], expected[-2:]):  # each thread's last batch, kept once its thread is done
            same_batch(name, got, want)

    # the stream: a pass is as many batches, and once settled its threads idle, 2 batches each ahead of those taken
    times = loader_gap.sampler_batches(store, 4)
    buffers = [[tuple(np.empty((4, *store.shape[1:]), store.dtype) for _ in "xy")] for _ in range(2)]
    stream = loader_gap.Stream(loader_gap.uncompressed(store), times, 2, 4, store.shape[1:], store.dtype, buffers)
    for passes_read in (1, 2):
        assert sum(1 for _ in stream()) == len(times)
        stream.settle()
        assert stream.taken == passes_read * (len(times) + 4)
        made = len(stream.made)
        time.sleep(0.05)
        assert len(stream.made) == made == stream.taken + 4

    rounds = {"stream": [100.0, 400.0, 300.0], "memcpy-samples": [100.0, 200.0, 300.0], "ring": [50.0, 200.0, 150.0]}
    rounds |= {"gather": [50.0, 200.0, 150.0], "loader": [25.0, 100.0, 75.0]}
    rows = {row["step"]: row for row in loader_gap.summary(rounds)}
    assert rows["ring"]["of_step_before"]["median"] == 0.5  # the ratio of the medians: 150 / 200
    assert rows["loader"]["of_step_before"]["median"] == 0.5  # of gather, not of the ceiling
    assert rows["loader"]["of_memcpy_samples"]["median"] == 0.25
    assert rows["ring"]["mb_per_s"] == 150.0
    assert rows["memcpy-samples"]["of_step_before"]["median"] == 1.0  # of the stream: 1, 0.5, 1
    assert rows["loader"]["of_stream"]["median"] == 0.25

    out = tmp_path / "gap.json"
    loader_gap.main([str(tiny_store), "--batch-size", "4", "--rounds", "2", "--json", str(out)])
    written = json.loads(out.read_text())
    assert [r["step"] for r in written["rows"]] == list(loader_gap.STEPS)
    assert all(r["mb_per_s"] > 0 and r["rounds"] == 2 for r in written["rows"])
    assert (written["ring"], written["workers"]) == (3, 2)


def test_the_loader_gap_refuses_a_store_that_is_not_float32(tiny_raw, tmp_path, monkeypatch):
    """The loader converts a float16 store's batches to float32 (a copy more, twice the bytes counted) and leaves
    the static fields out of its buffers: its step would not be the same work as the copies before it."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import loader_gap

    recipe = demo_recipe(tmp_path, tiny_raw, storage={"dtype": "float16"})
    path = build(recipe, tmp_path / "half.zarr", progress=False).path
    with pytest.raises(SystemExit, match="float16 store"):
        loader_gap.passes(open_store(path), 4, 2, ring=3)
