"""The build on dask.distributed: the same store bit for bit, killed workers, a killed driver,
errors as the local build gives them, and workers that cannot see the files."""

import asyncio
import errno
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from canonstore.errors import SourceError, StoreError
from canonstore.formats import verify_store
from canonstore.formats.manifest import read_manifest
from canonstore.preprocess import build, executor, scan
from canonstore.preprocess.sources import Sources
from canonstore.preprocess.staging import MARKERS, staging_path, written_shards
from tests.helpers import PROCESS_GROUPS, demo_recipe, write_recipe
from tests.preprocess.test_bad_input import CASES, SPLITS

pytestmark = [pytest.mark.slow, PROCESS_GROUPS]  # starts dask.distributed clusters

silent = {"progress": False}


def _files(store: Path) -> dict:
    """sha256 of every file but the root metadata (which records when and how it was built)."""
    return {rel: e["sha256"] for rel, e in read_manifest(store)["files"].items() if rel != "zarr.json"}


def _two_workers():
    with (
        executor.environ_kept(),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        ) as local,
        Client(local) as client,
    ):
        yield local, client


@pytest.fixture(scope="module")
def dask_cluster():
    yield from _two_workers()


@pytest.fixture
def fresh_cluster():
    """Two workers of the test's own: one that kills every worker neither waits on another test's restarts nor
    leaves its cluster short for the next (on a loaded machine a restart outlasted the 60 s wait, three times)."""
    yield from _two_workers()


@pytest.fixture(scope="module")
def reference(tiny_raw, tmp_path_factory):
    """An in-process build of many shards (~50), for comparison."""
    folder = tmp_path_factory.mktemp("cluster")
    recipe = demo_recipe(folder, tiny_raw, storage={"shard_mb": 0.6})
    out = build(recipe, folder / "local.zarr", **silent).path
    return recipe, out


def test_a_local_cluster_of_two_workers_builds_the_same_store_bit_for_bit(reference, tmp_path):
    recipe, local = reference
    assert read_manifest(local)["files"]["data/c/40/0/0/0"]  # many shards, so both workers write some
    out = build(recipe, tmp_path / "cluster.zarr", workers=2, **silent).path
    assert verify_store(out) == []
    assert _files(out) == _files(local)  # data shards, statistics, splits, coordinates, static, masks


def test_the_general_path_on_a_cluster_equals_the_local_one(tiny_raw, tmp_path, dask_cluster):
    """float16 is written from a second read of the sources (no raw values staged in place)."""
    recipe = demo_recipe(tmp_path, tiny_raw, storage={"shard_mb": 0.3, "dtype": "float16"})
    local = build(recipe, tmp_path / "local.zarr", **silent).path
    out = build(recipe, tmp_path / "cluster.zarr", scheduler=dask_cluster[0].scheduler_address, **silent).path
    assert _files(out) == _files(local)


def test_in_place_normalisation_equals_reading_the_sources_twice(reference, tmp_path, monkeypatch):
    recipe, local = reference
    monkeypatch.setattr(Sources, "float32_exact", property(lambda self: np.zeros(len(self.channels), bool)))
    out = build(recipe, tmp_path / "two-reads.zarr", **silent).path
    assert _files(out) == _files(local)


def test_raw_values_lost_before_normalising_are_staged_again(reference, tmp_path, monkeypatch):
    """What a crashed node's unflushed pages look like: the write task sees another crc32 and reads again."""
    recipe, local = reference
    original = scan.scan_shard

    def scan_then_lose(job, k, moments=True):
        result = original(job, k, moments)
        if moments and k == 3:
            path = Path(job.staging, "data", "c", "3", "0", "0", "0")
            with open(path, "r+b") as f:
                f.write(b"\0" * 4096)
        return result

    monkeypatch.setattr(scan, "scan_shard", scan_then_lose)
    out = build(recipe, tmp_path / "lost.zarr", **silent).path
    assert _files(out) == _files(local)


def test_a_killed_worker_is_retried_and_the_store_is_the_same(reference, tmp_path, dask_cluster):
    recipe, local = reference
    local_cluster, client = dask_cluster
    out = tmp_path / "killed.zarr"
    staging = staging_path(out)
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("r", build(recipe, out, scheduler=local_cluster.scheduler_address, **silent))
    )
    thread.start()
    deadline = time.monotonic() + 60
    while len(written_shards(staging)) < 3 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.005)
    victim = next(iter(client.run(os.getpid).values()))
    written = len(written_shards(staging))
    os.kill(victim, signal.SIGKILL)  # the nanny starts a new worker; dask runs its tasks elsewhere
    thread.join(120)
    assert 3 <= written < 45, "the worker was not killed during the write pass"
    assert "r" in result, "the build did not finish after a worker was killed"
    assert verify_store(out) == [] and _files(out) == _files(local)
    client.wait_for_workers(2, timeout=60)


def test_resume_after_a_killed_driver_gives_the_same_store(reference, tmp_path, dask_cluster, said):
    recipe, local = reference
    out = tmp_path / "driver.zarr"
    staging = staging_path(out)
    address = dask_cluster[0].scheduler_address
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "canonstore",
            "build",
            str(recipe),
            "--out",
            str(out),
            "--quiet",
            "--scheduler",
            address,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(written_shards(staging)) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():
        pytest.skip("the build finished before it could be killed")
    done = len(written_shards(staging))
    build(recipe, out, resume=True, scheduler=address, progress=False)
    resumed = [line for line in said() if line.startswith("resuming")]
    assert resumed and int(resumed[0].split(": ")[1].split()[0]) >= done >= 5
    assert verify_store(out) == [] and _files(out) == _files(local)


def test_a_failing_task_gives_the_local_error_and_leaves_nothing(tmp_path, dask_cluster):
    make, keys, expected = CASES["+inf in the train year"]
    raw = tmp_path / "raw"
    raw.mkdir()
    make(raw)
    recipe = write_recipe(tmp_path, name="bad", sources=["raw/*.nc"], **{"splits": SPLITS, **keys})
    with pytest.raises(SourceError) as here:
        build(recipe, tmp_path / "local.zarr", **silent)
    out = tmp_path / "cluster.zarr"
    with pytest.raises(SourceError) as there:
        build(recipe, out, scheduler=dask_cluster[0].scheduler_address, **silent)
    assert str(there.value) == str(here.value) and all(part in str(there.value) for part in expected)
    assert not out.exists() and not staging_path(out).exists()


def test_workers_that_cannot_see_the_files_are_refused_before_any_task(dask_cluster, tmp_path):
    distributed = executor.DistributedExecutor(dask_cluster[1])
    distributed.check_shared([tmp_path])  # this machine's workers see this machine's files
    with pytest.raises(StoreError, match=r"dask worker .* cannot see .*nowhere.*filesystem that every worker mounts"):
        distributed.check_shared([tmp_path / "nowhere"])


def test_a_local_cluster_leaves_this_process_environment_as_it_was(tiny_raw, tmp_path):
    before = dict(os.environ)
    with executor.executor_for(workers=1):
        assert os.environ.get("OMP_NUM_THREADS") == "1"  # what dask's nannies set in the process starting them
    assert dict(os.environ) == before


def test_only_one_way_to_run_may_be_given(tiny_raw, tmp_path):
    with (
        pytest.raises(StoreError, match="one of --scheduler, --scheduler-file and --workers"),
        executor.executor_for(scheduler="tcp://127.0.0.1:1", workers=2),
    ):
        pass


def test_a_scheduler_file_is_read_as_dask_jobqueue_writes_it(reference, tmp_path, dask_cluster):
    recipe, local = reference
    info = tmp_path / "scheduler.json"
    info.write_text(json.dumps({"address": dask_cluster[0].scheduler_address, "type": "Scheduler"}))
    out = build(recipe, tmp_path / "file.zarr", scheduler_file=str(info), **silent).path
    assert _files(out) == _files(local)


def _times(job, k):
    time.sleep(0.05)
    return k * job


def _map_in_a_thread(client, items, limit: float = 90.0) -> dict:
    """Run one pass of `_times` over `items`; {"results": ..., "error": ..., "hung": bool} after at most `limit` s."""
    box = {}

    def run():
        try:
            box["results"] = dict(executor.DistributedExecutor(client).map(_times, 3, items))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    box["hung"] = thread.is_alive()
    return box


def test_a_worker_dying_while_data_is_copied_to_it_does_not_hang_a_pass(dask_cluster, monkeypatch):
    """The root cause of a `--workers 2` build hanging for good after one worker was killed: each pass
    sent its job with scatter(broadcast=True), and dask's Scheduler.replicate retries a worker that died
    while the data was copied to it forever (its set of target workers is fixed), so scatter never returned."""
    local, client = dask_cluster
    client.wait_for_workers(2, timeout=60)
    pids = client.run(os.getpid)
    copy = local.scheduler.gather_on_worker

    async def copy_to_a_dying_worker(worker_address, who_has):
        if worker_address in pids:
            os.kill(pids.pop(worker_address), signal.SIGKILL)
            await asyncio.sleep(0.2)
        return await copy(worker_address, who_has)

    monkeypatch.setattr(local.scheduler, "gather_on_worker", copy_to_a_dying_worker)
    box = _map_in_a_thread(client, list(range(12)))
    assert not box["hung"], "the pass hung"
    assert box.get("results") == {k: 3 * k for k in range(12)}, box.get("error")
    client.wait_for_workers(2, timeout=60)


def test_a_task_the_scheduler_drops_without_a_word_is_submitted_again(dask_cluster, monkeypatch):
    """Whatever dask loses track of, a pass ends: a task the client hears nothing of is looked up on the
    scheduler after `poll` seconds and submitted again if the scheduler no longer knows it."""
    monkeypatch.setattr(executor.DistributedExecutor, "poll", 0.5)
    local, client = dask_cluster

    def drop_quietly(dask_scheduler, prefix):
        """Forget the task without telling the client that wants it (what a lost message looks like)."""
        found = [ts for key, ts in dask_scheduler.tasks.items() if str(key).startswith(prefix)]
        for ts in found:
            for wanting in list(ts.who_wants or ()):
                wanting.wants_what.discard(ts)
            ts.who_wants = set() if ts.who_wants is not None else None
            dask_scheduler.transitions({ts.key: "forgotten"}, stimulus_id="test-drop")
        return len(found)

    items = list(range(20))
    box = {}
    thread = threading.Thread(target=lambda: box.update(_map_in_a_thread(client, items)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not client.run_on_scheduler(drop_quietly, prefix="_times-19-") and time.monotonic() < deadline:
        time.sleep(0.01)  # the last shard's task, still queued behind the others
    thread.join(95)
    assert not box["hung"], "the pass waited for a task the scheduler had forgotten"
    assert box.get("results") == {k: 3 * k for k in items}, box.get("error")


def test_the_job_is_computed_again_when_every_worker_holding_it_dies(fresh_cluster):
    """Scattered data dies with its last worker and dask cancels the tasks that need it ("lost
    dependencies", a traceback); the job sent as a task is computed again and the pass goes on."""
    local, client = fresh_cluster
    client.wait_for_workers(2, timeout=60)
    box = {}
    thread = threading.Thread(target=lambda: box.update(_map_in_a_thread(client, list(range(30)))), daemon=True)
    thread.start()
    time.sleep(0.5)  # tasks running on both workers, each holding the job
    for pid in client.run(os.getpid).values():
        os.kill(pid, signal.SIGKILL)
    thread.join(95)
    assert not box["hung"] and box.get("results") == {k: 3 * k for k in range(30)}, box.get("error")
    client.wait_for_workers(2, timeout=60)


def test_a_pass_given_up_midway_is_cancelled_before_its_client_closes(tmp_path, monkeypatch):
    """A full disk on the driver in the middle of a pass printed a 15-line `RuntimeError: IOLoop is closed`
    after the `error:` line: the pass was cleaned up at exit, after the local cluster had closed."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(OSError, match="No space left"), executor.executor_for(workers=1) as local:
        results = local.map(_times, 3, range(10))  # held, as scan.scan's frame holds it in the error's traceback
        for _ in results:
            raise OSError(errno.ENOSPC, "No space left on device")  # e.g. writing a shard's scan
    del results
    gc.collect()
    assert [f"{u.exc_type.__name__}: {u.exc_value}" for u in unraisable] == []


def test_a_task_error_on_local_workers_is_one_line_on_the_terminal_and_in_full_in_the_log(tmp_path):
    make, keys, expected = CASES["+inf in the train year"]
    raw = tmp_path / "raw"
    raw.mkdir()
    make(raw)
    recipe = write_recipe(tmp_path, name="bad", sources=["raw/*.nc"], **{"splits": SPLITS, **keys})
    out = tmp_path / "bad.zarr"
    done = subprocess.run(
        [sys.executable, "-m", "canonstore", "build", str(recipe), "--out", str(out), "--quiet", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr  # no "Compute Failed"
    assert all(part in done.stderr for part in expected) and "Compute Failed" not in done.stdout
    log = Path(f"{out}.log").read_text()
    assert "Traceback" in log and "in scan_shard" in log and "infinite values are neither data" in log
    assert not out.exists() and not staging_path(out).exists()


def test_a_build_on_two_local_workers_survives_kills_at_the_start_of_each_pass_and_midway(reference, tmp_path):
    """SIGKILL a worker process of `--workers 2` as the statistics pass begins, as the write pass begins and
    halfway through it: the build ends (bounded here by 150 s) with the store an uninterrupted build makes."""
    psutil = pytest.importorskip("psutil")
    recipe, local = reference
    out = tmp_path / "killed.zarr"
    staging = staging_path(out)
    moments = [
        lambda: any(Path(staging, MARKERS).glob("scan-*")),  # the statistics pass began
        lambda: Path(staging, "data", "zarr.json").is_file(),  # the write pass begins
        lambda: len(written_shards(staging)) >= 25,
    ]  # halfway through it
    proc = subprocess.Popen(
        [sys.executable, "-m", "canonstore", "build", str(recipe), "--out", str(out), "--quiet", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, killed = time.monotonic() + 150, []
    try:
        for i, moment in enumerate(moments):
            while proc.poll() is None and time.monotonic() < deadline and not moment():
                time.sleep(0.002)
            workers = [
                c
                for c in psutil.Process(proc.pid).children()
                if "spawn_main" in " ".join(c.cmdline()) and c.status() != psutil.STATUS_ZOMBIE
            ]
            if proc.poll() is None and workers:
                os.kill(workers[i % len(workers)].pid, signal.SIGKILL)
                killed.append(i)
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        pytest.fail(f"the build did not end within 150 s of its start (workers killed at moments {killed})")
    assert proc.returncode == 0 and stderr == "", stdout + stderr  # dask's messages go to the log
    assert len(killed) >= 2, "the build ended before the workers could be killed"
    assert verify_store(out) == [] and _files(out) == _files(local)
    assert "distributed.nanny WARNING: Restarting worker" in Path(f"{out}.log").read_text()
