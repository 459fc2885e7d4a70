"""Faults: kill -9 mid-build, resume, determinism, a second concurrent build, readers during a
rebuild, flipped bytes, and raw inputs that change after the build."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from canonstore import open_dataset, open_store
from canonstore.cli import main
from canonstore.errors import StoreError
from canonstore.formats import verify_store
from canonstore.formats.manifest import data_checksums, read_manifest, store_files
from canonstore.formats.verify import verify_inputs
from canonstore.formats.zarr_ import ShardWriter
from canonstore.preprocess import build, lock
from canonstore.preprocess import staging as staging_files
from canonstore.preprocess.staging import PROGRESS, written_shards
from tests.helpers import demo_recipe

pytestmark = pytest.mark.slow  # kills builds at random moments, subprocesses

silent = {"progress": False}


def _data_sha(store: Path) -> str:
    return json.dumps(data_checksums(read_manifest(store)), sort_keys=True)


def _start_build(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "canonstore", "build", str(recipe), "--out", str(out), "--quiet", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> bool:
    """SIGKILL `proc` once `ready()` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait()
    return False


@pytest.fixture(scope="module")
def many_blocks(tiny_raw, tmp_path_factory):
    """A recipe whose build writes ~200 blocks (shards), and the data checksum of an uninterrupted build."""
    folder = tmp_path_factory.mktemp("faults")
    recipe = demo_recipe(folder, tiny_raw, storage={"shard_mb": 0.15})
    reference = build(recipe, folder / "reference.zarr", **silent).path
    return recipe, _data_sha(reference)


def test_kill_9_at_random_moments_never_leaves_a_partial_store(many_blocks, tmp_path):
    recipe, reference = many_blocks
    out = tmp_path / "demo.zarr"
    staging = out.with_name("demo.zarr.partial")
    rng = random.Random(1234)
    # Random moments: some in start-up or the statistics pass (a delay), some inside the write pass
    # (once a random number of shards is on disk); each kill resumes the previous one's partial.
    moments = [("seconds", rng.uniform(0.2, 2.0)) for _ in range(2)] + [
        ("shards", rng.randrange(5, 180)) for _ in range(3)
    ]
    rng.shuffle(moments)
    for kind, when in moments:
        proc = _start_build(recipe, out, "--resume")
        start = time.monotonic()

        def now(kind=kind, when=when, start=start) -> bool:
            if kind == "seconds":
                return time.monotonic() - start > when
            return len(written_shards(staging)) >= when

        finished = not _kill_when(proc, now)
        # The final path holds nothing or a whole store, never a partial one. A whole one also after
        # a kill: the kill may land after the publishing rename, in the process's last moments.
        if finished or out.exists():
            assert verify_store(out) == [] and _data_sha(out) == reference
            shutil.rmtree(out)
    done = subprocess.run(
        [sys.executable, "-m", "canonstore", "build", str(recipe), "--out", str(out), "--quiet", "--resume"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert verify_store(out) == [] and _data_sha(out) == reference
    assert not out.with_name("demo.zarr.partial").exists()


def test_a_killed_rebuild_leaves_the_previous_store_intact(many_blocks, tmp_path):
    recipe, reference = many_blocks
    out = tmp_path / "demo.zarr"
    build(recipe, out, **silent)
    before = (out / "manifest.json").read_text()
    staging = out.with_name("demo.zarr.partial")
    proc = _start_build(recipe, out, "--force")
    assert _kill_when(proc, lambda: (staging / PROGRESS).exists())
    assert (out / "manifest.json").read_text() == before and verify_store(out) == []


def test_resume_goes_on_from_the_last_shard(many_blocks, tmp_path, said):
    recipe, reference = many_blocks
    out = tmp_path / "demo.zarr"
    staging = out.with_name("demo.zarr.partial")
    assert _kill_when(_start_build(recipe, out), lambda: len(written_shards(staging)) > 50)
    assert not out.exists() and staging.exists()
    done_before = len(written_shards(staging))
    build(recipe, out, resume=True, progress=False)
    resumed = [line for line in said() if line.startswith("resuming")]
    assert resumed and int(resumed[0].split(": ")[1].split()[0]) >= done_before
    assert verify_store(out) == [] and _data_sha(out) == reference


def test_without_resume_a_partial_is_discarded_and_the_result_is_the_same(many_blocks, tmp_path, said):
    recipe, reference = many_blocks
    out = tmp_path / "demo.zarr"
    staging = out.with_name("demo.zarr.partial")
    assert _kill_when(_start_build(recipe, out), lambda: (staging / PROGRESS).exists())
    build(recipe, out, progress=False)
    assert any(line.startswith(f"discarding {staging}") for line in said())
    assert _data_sha(out) == reference


def test_two_builds_of_the_same_inputs_are_identical(many_blocks, tmp_path):
    recipe, reference = many_blocks
    out = build(recipe, tmp_path / "again.zarr", **silent).path
    mine, theirs = read_manifest(out)["files"], read_manifest(Path(recipe).parent / "reference.zarr")["files"]
    assert _data_sha(out) == reference
    for name in ("stats_mean/c/0", "stats_std/c/0", "split/c/0", "static/c/0/0/0"):
        assert mine[name]["sha256"] == theirs[name]["sha256"], name


def test_a_second_build_of_the_same_store_is_refused_clearly(tiny_raw, tmp_path):
    out = tmp_path / "demo.zarr"
    with (
        lock.build_lock(out),
        pytest.raises(StoreError, match=r"another build of .*demo.zarr is running \(pid \d+ on .*, started"),
    ):
        build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    assert not out.exists()
    build(demo_recipe(tmp_path, tiny_raw), out, **silent)  # the lock goes with its holder
    assert verify_store(out) == []


def test_without_flock_the_build_says_so_and_uses_an_exclusive_lock_file(tiny_raw, tmp_path, monkeypatch, said):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock.fcntl, "flock", no_flock)  # what some Lustre mounts answer
    out = tmp_path / "demo.zarr"
    with lock.build_lock(out):
        assert "does not support flock" in said()[0] and Path(f"{out}.lock.excl").is_file()
        with pytest.raises(StoreError, match=r"another build of .*demo.zarr is running .*delete it"):
            build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    assert not Path(f"{out}.lock.excl").exists()  # removed when the build ends
    assert build(demo_recipe(tmp_path, tiny_raw), out, **silent).built


def test_markers_only_claim_shards_that_reached_the_disk(tiny_raw, tmp_path, monkeypatch):
    events = []
    finish = ShardWriter.finish_shard  # ends in fsync of the shard file
    monkeypatch.setattr(ShardWriter, "finish_shard", lambda self, k: events.append(("synced", k)) or finish(self, k))
    durably = staging_files.write_file_atomic  # writes the markers

    def marker(path, data):
        events.append(("marker", path.name))
        durably(path, data)

    monkeypatch.setattr(staging_files, "write_file_atomic", marker)
    build(demo_recipe(tmp_path, tiny_raw, storage={"shard_mb": 0.25}), tmp_path / "demo.zarr", block_mb=0.1, **silent)
    written = [i for i, (kind, name) in enumerate(events) if kind == "marker" and name.startswith("shard-")]
    assert len(written) > 20
    for i in written:  # every "shard k is written" marker follows the fsync of shard k
        k = int(events[i][1].split("-")[1].split(".")[0])
        assert ("synced", k) in events[:i], f"shard {k} marked written before its data was flushed"


def test_readers_of_the_old_store_keep_working_during_a_rebuild(tiny_raw, tmp_path):
    out = tmp_path / "demo.zarr"
    build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    old = open_store(out)
    array, copy = old.array, np.array(old.array[:50])
    build(demo_recipe(tmp_path, tiny_raw, time={"start": "2000-03-01", "end": "2002-12-31"}), out, **silent)
    np.testing.assert_array_equal(array[:50], copy)  # the old mapping still reads the old data
    new = open_store(out)
    assert new.shape[0] < old.shape[0] and verify_store(out) == []
    assert not list(tmp_path.glob("demo.zarr.old-*")) and not (tmp_path / "demo.zarr.partial").exists()


def test_a_dataset_never_mixes_two_builds(tiny_raw, tmp_path):
    import pickle

    out = tmp_path / "demo.zarr"
    build(demo_recipe(tmp_path, tiny_raw), out, **silent)
    mapped = open_dataset(out, "train")
    before = mapped[10][0].clone()
    worker_copy = pickle.dumps(mapped)  # what a DataLoader worker receives
    build(demo_recipe(tmp_path, tiny_raw, time={"start": "2000-02-01", "end": "2002-12-31"}), out, **silent)
    assert torch.equal(mapped[10][0], before)  # already mapped: keeps the old build
    with pytest.raises(StoreError, match="was rebuilt after this dataset was created"):
        pickle.loads(worker_copy)[10]  # maps later: refuses to mix builds
    assert len(open_dataset(out, "train")) < len(mapped)


@pytest.mark.parametrize("target", ["data", "stats_mean", "stats_std", "split", "zarr.json"])
def test_verify_detects_one_flipped_byte(tiny_store, tmp_path, target):
    store = shutil.copytree(tiny_store, tmp_path / "copy.zarr")
    files = [p for p in store.rglob("*") if p.is_file() and p.relative_to(store).parts[0] == target]
    victim = max(files, key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    problems = verify_store(store)
    assert any(victim.relative_to(store).as_posix() in p and "sha256 differs" in p for p in problems), problems
    result = CliRunner().invoke(main, ["verify", str(store)])
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("verify: ")]  # progress
    assert result.exit_code == 1 and lines and all(line.startswith("error: ") for line in lines), result.output


def test_verify_inputs_names_a_raw_file_changed_after_the_build(tiny_raw, tmp_path):
    raw = shutil.copytree(tiny_raw, tmp_path / "raw")
    out = build(demo_recipe(tmp_path, raw), tmp_path / "demo.zarr", **silent).path
    assert verify_inputs(out) == []
    with netCDF4.Dataset(raw / "t2m_2001.nc", "r+") as ds:
        ds["t2m"][3, 0, 0] = ds["t2m"][3, 0, 0] + 1.0
    (raw / "msl_2002.nc").unlink()
    problems = verify_inputs(out)
    assert len(problems) == 2
    assert "t2m_2001.nc: changed since the build (sha256" in problems[0] or "t2m_2001.nc: changed" in problems[1]
    assert any("msl_2002.nc: missing" in p for p in problems)
    result = CliRunner().invoke(main, ["verify", str(out), "--inputs"])
    assert result.exit_code == 1 and "t2m_2001.nc" in result.output
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0  # the store itself is intact


def test_two_builds_at_once_one_refused_the_other_whole(many_blocks, tmp_path):
    recipe, reference = many_blocks
    out = tmp_path / "demo.zarr"
    first = _start_build(recipe, out)
    deadline = time.monotonic() + 60
    while not (out.with_name("demo.zarr.partial") / PROGRESS).exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the first build is writing
    second = subprocess.run(
        [sys.executable, "-m", "canonstore", "build", str(recipe), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"error: another build of {out} is running (pid {first.pid} on " in second.stderr
    assert first.wait() == 0
    assert verify_store(out) == [] and _data_sha(out) == reference


@pytest.mark.parametrize("command", ["build", "append"])
@pytest.mark.parametrize("left", ["demo.zarr.partial", "demo.zarr.old-4321"])
def test_an_old_store_half_removed_by_a_kill_is_cleared_by_the_next_command(tiny_store, tmp_path, command, left, said):
    from canonstore.preprocess.append import append

    out = shutil.copytree(tiny_store, tmp_path / "demo.zarr")
    # What a kill just after the publishing swap leaves: the previous store beside the new one, marked as
    # canonstore's before the swap, partly removed (the marker goes last); where the filesystem cannot swap,
    # it was renamed to <store>.old-<pid> first.
    half = shutil.copytree(out, tmp_path / left)
    (half / ".canonstore-staging").write_text(json.dumps({"made_by": "canonstore", "kind": "store"}))
    shutil.rmtree(half / "data")
    if command == "build":
        assert not build(open_store(out).attrs["recipe_path"], out, progress=False).built
    else:
        assert not append(out, progress=False).built  # up to date: nothing else to do
    assert not half.exists() and f"removing {half}: left by an interrupted build" in said()
    assert verify_store(out) == []


KILL_WHILE_REMOVING_THE_OLD_STORE = """
import os, signal, sys
from canonstore import atomic
from canonstore.cli import main

swap, rmtree = atomic.exchange, atomic.shutil.rmtree

def rmtree_then_die(*args, **kwargs):
    rmtree(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

def swap_then_arm(a, b):
    swapped = swap(a, b) if os.environ["SWAP"] == "exchange" else False  # False: renamed aside instead
    atomic.shutil.rmtree = rmtree_then_die  # the kill lands once part of the old store is removed
    return swapped

atomic.exchange = swap_then_arm
sys.argv = ["canonstore", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_kill_right_after_the_publishing_swap_is_cleaned_up_by_the_next_build(tiny_store, tmp_path, swap):
    out = shutil.copytree(tiny_store, tmp_path / "demo.zarr")
    recipe = open_store(out).attrs["recipe_path"]
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_WHILE_REMOVING_THE_OLD_STORE,
            "build",
            recipe,
            "--out",
            str(out),
            "--force",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SWAP": swap},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [left] = tmp_path.glob("demo.zarr.partial" if swap == "exchange" else "demo.zarr.old-*")
    assert 0 < len(store_files(left)) < len(read_manifest(left)["files"])  # part of the old store
    assert verify_store(out) == []
    done = subprocess.run(
        [sys.executable, "-m", "canonstore", "build", recipe, "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and f"removing {left}: left by an interrupted build" in done.stdout, done.stderr
    assert not left.exists() and verify_store(out) == []


def test_verify_during_a_rebuild_says_so_instead_of_reporting_damage(tiny_raw, tmp_path, monkeypatch):
    from canonstore.formats import manifest

    out = build(demo_recipe(tmp_path, tiny_raw), tmp_path / "demo.zarr", **silent).path
    real, started = manifest.file_sha256, []

    def rebuild_once_hashing_started(path, *args):
        if not started:
            started.append(path)  # a shorter train year: every shard and statistic changes
            build(demo_recipe(tmp_path, tiny_raw, time={"start": "2000-03-01", "end": "2002-12-31"}), out, **silent)
        return real(path, *args)

    monkeypatch.setattr(manifest, "file_sha256", rebuild_once_hashing_started)
    assert verify_store(out) == [f"{out} was rebuilt or replaced while it was being verified; verify it again"]
    assert verify_store(out) == []


def test_a_full_disk_during_a_build_names_the_shard_file(tiny_raw, tmp_path, monkeypatch):
    """ENOSPC while writing a shard: one line naming that file, and no staging left behind (a guard: the
    shard task already names its file)."""
    real_pwrite = os.pwrite

    def full(fd, data, offset):
        if "/data/c/" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "demo.zarr"
    with pytest.raises(StoreError, match=r"demo\.zarr\.partial/data/c/0(/0)+: No space left on device"):
        build(demo_recipe(tmp_path, tiny_raw), out, progress=False)
    assert not out.exists() and not out.with_name("demo.zarr.partial").exists()
