"""The build on dask.distributed: the same store bit for bit, killed workers, a killed driver,
errors as the local build gives them, and workers that cannot see the files."""

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
from canonstore.preprocess import build, cluster, tasks, writer
from canonstore.preprocess.sources import Sources
from tests.conftest import demo_recipe, write_recipe
from tests.test_bad_input import CASES, SPLITS

quiet = {"progress": False, "log": lambda *_: None}


def _files(store: Path) -> dict:
    """sha256 of every file but the root metadata (which records when and how it was built)."""
    return {rel: e["sha256"] for rel, e in read_manifest(store)["files"].items() if rel != "zarr.json"}


@pytest.fixture(scope="module")
def dask_cluster():
    with cluster.environ_kept(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                              dashboard_address=None, silence_logs=40) as local, \
            Client(local) as client:
        yield local, client


@pytest.fixture(scope="module")
def reference(tiny_raw, tmp_path_factory):
    """An in-process build of many shards (~50), for comparison."""
    folder = tmp_path_factory.mktemp("cluster")
    recipe = demo_recipe(folder, tiny_raw, storage={"shard_mb": 0.6})
    out = build(recipe, folder / "local.zarr", **quiet).path
    return recipe, out


def test_a_local_cluster_of_two_workers_builds_the_same_store_bit_for_bit(reference, tmp_path):
    recipe, local = reference
    assert read_manifest(local)["files"]["data/c/40/0/0/0"]  # many shards, so both workers write some
    out = build(recipe, tmp_path / "cluster.zarr", workers=2, **quiet).path
    assert verify_store(out) == []
    assert _files(out) == _files(local)  # data shards, statistics, splits, coordinates, static, masks


def test_the_general_path_on_a_cluster_equals_the_local_one(tiny_raw, tmp_path, dask_cluster):
    """float16 is written from a second read of the sources (no raw values staged in place)."""
    recipe = demo_recipe(tmp_path, tiny_raw, storage={"shard_mb": 0.3, "dtype": "float16"})
    local = build(recipe, tmp_path / "local.zarr", **quiet).path
    out = build(recipe, tmp_path / "cluster.zarr", scheduler=dask_cluster[0].scheduler_address, **quiet).path
    assert _files(out) == _files(local)


def test_in_place_normalisation_equals_reading_the_sources_twice(reference, tmp_path, monkeypatch):
    recipe, local = reference
    monkeypatch.setattr(Sources, "float32_exact", property(lambda self: np.zeros(len(self.channels), bool)))
    out = build(recipe, tmp_path / "two-reads.zarr", **quiet).path
    assert _files(out) == _files(local)


def test_raw_values_lost_before_normalising_are_staged_again(reference, tmp_path, monkeypatch):
    """What a crashed node's unflushed pages look like: the write task sees another crc32 and reads again."""
    recipe, local = reference
    scan = tasks.scan_shard

    def scan_then_lose(job, k, moments=True):
        result = scan(job, k, moments)
        if moments and k == 3:
            path = Path(job.staging, "data", "c", "3", "0", "0", "0")
            with open(path, "r+b") as f:
                f.write(b"\0" * 4096)
        return result

    monkeypatch.setattr(tasks, "scan_shard", scan_then_lose)
    out = build(recipe, tmp_path / "lost.zarr", **quiet).path
    assert _files(out) == _files(local)


def test_a_killed_worker_is_retried_and_the_store_is_the_same(reference, tmp_path, dask_cluster):
    recipe, local = reference
    local_cluster, client = dask_cluster
    out = tmp_path / "killed.zarr"
    staging = writer.staging_path(out)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", build(
        recipe, out, scheduler=local_cluster.scheduler_address, **quiet)))
    thread.start()
    deadline = time.monotonic() + 60
    while len(tasks.written_shards(staging)) < 3 and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.005)
    victim = next(iter(client.run(os.getpid).values()))
    written = len(tasks.written_shards(staging))
    os.kill(victim, signal.SIGKILL)  # the nanny starts a new worker; dask runs its tasks elsewhere
    thread.join(120)
    assert 3 <= written < 45, "the worker was not killed during the write pass"
    assert "r" in result, "the build did not finish after a worker was killed"
    assert verify_store(out) == [] and _files(out) == _files(local)
    client.wait_for_workers(2, timeout=60)


def test_resume_after_a_killed_driver_gives_the_same_store(reference, tmp_path, dask_cluster):
    recipe, local = reference
    out = tmp_path / "driver.zarr"
    staging = writer.staging_path(out)
    address = dask_cluster[0].scheduler_address
    proc = subprocess.Popen([sys.executable, "-m", "canonstore", "build", str(recipe), "--out", str(out), "--quiet",
                             "--scheduler", address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(tasks.written_shards(staging)) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():
        pytest.skip("the build finished before it could be killed")
    done = len(tasks.written_shards(staging))
    log = []
    build(recipe, out, resume=True, scheduler=address, progress=False, log=log.append)
    resumed = [line for line in log if line.startswith("resuming")]
    assert resumed and int(resumed[0].split(": ")[1].split()[0]) >= done >= 5
    assert verify_store(out) == [] and _files(out) == _files(local)


def test_a_failing_task_gives_the_local_error_and_leaves_nothing(tmp_path, dask_cluster):
    make, keys, expected = CASES["+inf in the train year"]
    raw = tmp_path / "raw"
    raw.mkdir()
    make(raw)
    recipe = write_recipe(tmp_path, name="bad", sources=["raw/*.nc"], **{"splits": SPLITS, **keys})
    with pytest.raises(SourceError) as here:
        build(recipe, tmp_path / "local.zarr", **quiet)
    out = tmp_path / "cluster.zarr"
    with pytest.raises(SourceError) as there:
        build(recipe, out, scheduler=dask_cluster[0].scheduler_address, **quiet)
    assert str(there.value) == str(here.value) and all(part in str(there.value) for part in expected)
    assert not out.exists() and not writer.staging_path(out).exists()


def test_workers_that_cannot_see_the_files_are_refused_before_any_task(dask_cluster, tmp_path):
    runner = cluster.Distributed(dask_cluster[1])
    runner.check_shared([tmp_path])  # this machine's workers see this machine's files
    with pytest.raises(StoreError, match=r"dask worker .* cannot see .*nowhere.*filesystem that every worker mounts"):
        runner.check_shared([tmp_path / "nowhere"])


def test_a_local_cluster_leaves_this_process_environment_as_it_was(tiny_raw, tmp_path):
    before = dict(os.environ)
    with cluster.runner(workers=1, log=lambda *_: None):
        assert os.environ.get("OMP_NUM_THREADS") == "1"  # what dask's nannies set in the process starting them
    assert dict(os.environ) == before


def test_only_one_way_to_run_may_be_given(tiny_raw, tmp_path):
    with pytest.raises(StoreError, match="one of --scheduler, --scheduler-file and --workers"):
        with cluster.runner(scheduler="tcp://127.0.0.1:1", workers=2):
            pass


def test_a_scheduler_file_is_read_as_dask_jobqueue_writes_it(reference, tmp_path, dask_cluster):
    recipe, local = reference
    info = tmp_path / "scheduler.json"
    info.write_text(json.dumps({"address": dask_cluster[0].scheduler_address, "type": "Scheduler"}))
    out = build(recipe, tmp_path / "file.zarr", scheduler_file=str(info), **quiet).path
    assert _files(out) == _files(local)
