"""bench/peers: the rows that keep no DataLoader (forked batches), the rows in their own order, and the
other canonstore layouts deliver what canonstore's batch path does. The peers' own venvs are not needed."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from canonstore import open_store
from canonstore.preprocess import build
from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # builds three tiny stores

TINY = {
    "levels": (500, 850),
    "pressure": ("z", "t"),
    "surface": ("t2m", "msl"),
    "grid": (8, 16),
    "steps": 60,
    "batch": 4,
}


@pytest.fixture
def peers(tmp_path, monkeypatch):
    """(rows, run, where, plan) for a tiny size, with canonstore's three layouts built."""
    monkeypatch.syspath_prepend(str(ROOT / "bench" / "peers"))
    import data
    import rows
    import run

    monkeypatch.setitem(data.SIZES, "t", TINY)
    monkeypatch.setattr(data, "SHARD_MB", 0.01)  # 2 steps a shard: many shards
    where = data.write_size(tmp_path, "t")
    for name in ("canonstore", "canonstore-shards", "canonstore-zstd"):
        build(where / f"{name}.yaml", where / f"{name}.zarr", progress=False)
    plan = json.loads(run.write_plan(where, "t", argparse.Namespace(workers=2, seconds=0.2)).read_text())
    return rows, run, where, plan


def test_the_other_layouts_and_forked_batches_deliver_canonstores_batches(peers):
    rows, run, where, plan = peers
    assert len(list((where / "canonstore-shards.zarr" / "data" / "c").iterdir())) > 10
    for row in ("canonstore-batch", "canonstore-shards", "canonstore-zstd"):
        warm_up = 0.3 if row == "canonstore-shards" else 0.0  # the first batch saved is still the plan's first
        assert rows.measure({**plan, "warm_up_s": warm_up}, row, "warm", where)["samples"] > 0
    array = open_store(where / "canonstore.zarr").array

    def fill(steps, x, y):  # runs in the forked workers, from the memmap opened before the fork
        x[:] = array[steps]
        y[:] = array[np.add(steps, 1)]

    twice = {**plan, "batches": plan["batches"] * 2}
    got = [(x.copy(), y.copy()) for x, y in rows.ForkedBatches(twice, fill)]
    assert len(got) == len(twice["batches"])  # every batch once, in the plan's order, slots reused
    for (x, y), steps in zip(got, twice["batches"]):
        np.testing.assert_array_equal(x, array[steps])
        np.testing.assert_array_equal(y, array[np.add(steps, 1)])
    np.save(where / "first-anemoi-fork-x.npy", got[0][0])  # as a forked row leaves its first batch
    np.save(where / "first-anemoi-fork-y.npy", got[0][1])
    steps = np.array(plan["batches"][3])  # a row in its own order names its first batch's steps
    np.save(where / "first-insitubatch-x.npy", array[steps])
    np.save(where / "first-insitubatch-y.npy", array[steps + 1] + 1e-3)
    np.save(where / "first-insitubatch-t.npy", steps)
    diffs = run.compare_first_batches(where)
    assert diffs["canonstore-shards"] == diffs["canonstore-zstd"] == diffs["anemoi-fork"] == 0.0, diffs
    assert diffs["insitubatch"] == pytest.approx(1e-3, rel=1e-3), diffs
    assert not (where / "first-insitubatch-t.npy").exists()


def test_the_mllam_recipe_selects_levels_in_millibars_and_the_train_split(peers):
    import data

    _, _, where, _ = peers
    text = (where / "mllam.yaml").read_text()
    assert "{z: {level: {values: [500, 850], units: millibars}}}" in text
    assert "train: {start: '2000-01-01T00:00', end: '2000-01-12T18:00'" in text  # step 47, canonstore's train end
    assert data.layout("t")["train"] == (0, 47)


def test_a_second_run_of_some_rows_is_merged_and_each_row_keeps_its_own_reference(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench" / "peers"))
    import run

    def result(when, rows):
        return {
            "runs": [when],
            "rows": [{"row": r, "mode": "warm", "canonstore_x": x} for r, x in rows],
            "cold_reads": {when: {}},
            "first_batch_max_abs_diff": {},
        }

    first = result("A", [("canonstore-batch", 1.0), ("anemoi", 20.0), ("xbatcher", 300.0)])
    second = result("B", [("canonstore-batch", 1.0), ("xbatcher", 280.0)])
    merged = run.merge(first, second)
    got = {r["row"]: (r["canonstore_x"], r["run"]) for r in merged["rows"]}
    assert got == {"canonstore-batch": (1.0, "B"), "anemoi": (20.0, "A"), "xbatcher": (280.0, "B")}
    assert merged["runs"] == ["A", "B"] and set(merged["cold_reads"]) == {"A", "B"}


def test_peer_data_never_removes_a_folder_it_did_not_write(tmp_path, monkeypatch):
    """`--data` names a folder: a size folder there is rewritten only when the benchmark's marker is in it."""
    monkeypatch.syspath_prepend(str(ROOT / "bench" / "peers"))
    import data

    users = tmp_path / "s"
    users.mkdir()
    (users / "mine.nc").write_text("a user's file")
    with pytest.raises(SystemExit, match="not written by this benchmark"):
        data.write_size(tmp_path, "s")
    assert (users / "mine.nc").read_text() == "a user's file"


def test_a_rows_peak_rss_is_its_own_not_the_parents_it_was_forked_from():
    """ru_maxrss carries over exec from the forked parent's memory: every row at size l reported at least run.py's
    4.27 GB. A row's process, started by a parent holding 400 MB, must report only what it holds itself."""
    held = np.ones(400_000_000 // 8)  # touched: resident in this (the parent) process while the row runs
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'bench' / 'peers')!r}); import rows; print(rows.peak_rss_mb())"
    reported = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    del held
    assert 0 < reported < 200  # numpy and the bench's imports, far below the parent's 400 MB


def test_a_rows_peak_rss_is_in_the_builds_mb_and_unknown_without_proc(tmp_path, monkeypatch):
    """/proc counts in kB of 1024 bytes; the builds' peak_rss_mb is bytes / 10^6, and the two sit in one table. No
    VmHWM (no /proc, or a kernel without it) is None, not ru_maxrss (kB on Linux, bytes on macOS)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench" / "peers"))
    import rows

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 2000000 kB\nVmHWM:\t 1000000 kB\nVmRSS:\t  500000 kB\n")
    assert rows.peak_rss_mb(str(status)) == 1024.0  # 1,000,000 x 1024 bytes
    status.write_text("Name:\tpython\nVmRSS:\t  500000 kB\n")
    assert rows.peak_rss_mb(str(status)) is None
    assert rows.peak_rss_mb(str(tmp_path / "no-proc")) is None


def test_without_cold_rounds_no_cold_read_is_made_and_with_them_each_read_set_is_measured(peers, monkeypatch):
    """`--cold-repeats 0` (warm rows only) took the median of no cold reads and failed after every warm row had run."""
    rows, run, where, plan = peers
    reads = []
    monkeypatch.setattr(run, "evict", lambda paths: None)
    monkeypatch.setattr(run, "read_all", lambda paths, direct=False: reads.append(direct) or {"mb_per_s": 1.0})
    sets = {"store": where / "canonstore.zarr", "anemoi": where / "anemoi.zarr"}
    assert run.cold_reads_of(sets, ["canonstore-batch", "memcpy"], 0) == {} and reads == []
    limits = run.cold_reads_of(sets, ["canonstore-batch"], 3)
    assert list(limits) == ["store"] and reads == [False] * 3 + [True] * 3  # only the set a row reads
    assert limits["store"]["sequential"]["mb_per_s"] == 1.0 and limits["store"]["direct"]["repeats"] == [1.0] * 3


def test_the_memcpy_ceilings_copy_into_page_aligned_buffers(peers, monkeypatch):
    """A ceiling copies as the loader does: into a buffer whose data starts on a page, as the memmap's steps do
    (np.empty's starts 16 bytes in, where slab copies ran 7% slower)."""
    import mmap

    rows, run, where, plan = peers
    x, _ = next(iter(rows.memcpy(plan)))
    assert x.ctypes.data % mmap.PAGESIZE == 0
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from loader import memcpy_batches

    args = argparse.Namespace(batch_size=2, workers=2)
    x, _ = next(memcpy_batches(open_store(where / "canonstore.zarr"), args))
    assert x.ctypes.data % mmap.PAGESIZE == 0
