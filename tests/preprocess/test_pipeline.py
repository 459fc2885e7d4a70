"""The build's threads (preprocess.pipeline): in order, errors raised as they were raised, every thread stopped
before the caller goes on; a pipelined build writes the store a serial one writes, bit for bit."""

import hashlib
import threading
import time

import numpy as np
import pytest

from canonstore.errors import SourceError
from canonstore.formats.manifest import read_manifest
from canonstore.preprocess import build, executor, scan, write
from canonstore.preprocess.pipeline import Stage, ordered_map, prefetched
from canonstore.preprocess.shard_jobs import BlockLayout, ShardJob
from canonstore.preprocess.sources import Sources
from canonstore.preprocess.staging import staging_path
from tests.helpers import demo_recipe


class Boom(Exception):
    pass


def test_ordered_map_gives_the_serial_results_in_order():
    def slow_for_even(i):
        time.sleep(0.01 if i % 2 == 0 else 0)
        return i * i

    assert list(ordered_map(slow_for_even, range(9), threads=3)) == [(i, i * i) for i in range(9)]
    assert list(ordered_map(slow_for_even, range(9), threads=1)) == [(i, i * i) for i in range(9)]


def test_ordered_map_raises_at_the_failing_item_after_the_calls_beside_it_returned():
    begun, running = [], []

    def task(i):
        begun.append(i)
        running.append(i)
        try:
            if i == 2:
                raise Boom("shard 2 is bad")
            time.sleep(0.05)
            return i
        finally:
            running.remove(i)

    got = []
    with pytest.raises(Boom, match="shard 2 is bad"):
        for _item, result in ordered_map(task, range(10), threads=2):
            got.append(result)
    assert got == [0, 1]
    assert running == []  # nothing runs on once the error reached the caller
    assert max(begun) <= 4  # and no more than `threads` items were begun ahead


def test_two_calls_failing_side_by_side_raise_the_first_with_the_other_as_a_note():
    both_running = threading.Barrier(2)

    def task(i):
        both_running.wait(timeout=5)
        raise Boom(f"shard {i} is bad") if i == 0 else OSError(28, f"No space left writing shard {i}")

    with pytest.raises(Boom, match="shard 0 is bad") as raised:
        list(ordered_map(task, range(4), threads=2))
    assert raised.value.__notes__ == ["also, in another task: OSError: [Errno 28] No space left writing shard 1"]


def test_a_stage_error_beside_a_caller_error_is_a_note_on_it():
    def fn(i):
        raise OSError(28, "No space left on device")

    with pytest.raises(Boom) as raised, Stage(fn, name="canonstore-stage-7") as stage:
        stage.put(0)
        deadline = time.monotonic() + 5
        while stage._error is None and time.monotonic() < deadline:
            time.sleep(0.001)
        raise Boom("normalising failed")
    assert raised.value.__notes__ == ["also, in canonstore-stage-7: OSError: [Errno 28] No space left on device"]


def test_a_stage_runs_its_items_in_order():
    seen = []
    with Stage(seen.append, depth=2) as stage:
        for i in range(50):
            stage.put(i)
    assert seen == list(range(50))


def test_a_stage_error_is_raised_in_the_caller_and_the_rest_is_dropped():
    seen = []

    def fn(i):
        if i == 3:
            raise OSError(28, "No space left on device")
        seen.append(i)

    with pytest.raises(OSError, match="No space left"), Stage(fn) as stage:
        for i in range(100):
            stage.put(i)
    assert seen == [0, 1, 2]
    assert not any(t.name == "canonstore-stage" for t in threading.enumerate())


def test_a_caller_error_stops_the_stage_before_it_goes_on():
    seen = []
    with pytest.raises(Boom), Stage(lambda i: (time.sleep(0.01), seen.append(i))) as stage:
        stage.put(0)
        raise Boom()
    count = len(seen)
    time.sleep(0.05)
    assert len(seen) == count <= 1  # the thread has ended: nothing runs after the caller left


def test_prefetched_items_and_errors_arrive_in_order():
    def produce():
        yield from range(3)
        raise Boom("read failed at 3")

    got = []
    with pytest.raises(Boom, match="read failed at 3"):
        for item in prefetched(produce):
            got.append(item)
    assert got == [0, 1, 2]


def test_a_caller_that_stops_early_stops_the_reader():
    made = []

    def produce():
        for i in range(1000):
            made.append(i)
            yield i

    items = prefetched(produce, name="canonstore-read-test")
    assert next(items) == 0
    items.close()
    assert not any(t.name == "canonstore-read-test" for t in threading.enumerate())
    assert len(made) <= 3


@pytest.mark.parametrize(
    "compression, blocks, cores, tasks",
    [
        ("none", BlockLayout(1, 1), 2, 3),  # shards of one block
        ("none", BlockLayout(4, 4), 2, 3),
        ("zstd", BlockLayout(1, 1), 2, 2),  # compressed: encoded whole in memory
        ("none", BlockLayout(1, 1), 1, 2),  # one core
        ("none", BlockLayout(4, 1), 2, 2),  # shards of 4 blocks
        ("none", BlockLayout(1, 1, block_channels=1), 2, 2),  # one step larger than a block, cut by channels
    ],
)
def test_in_process_builds_run_a_third_task_only_for_uncompressed_one_block_shards_on_two_cores(
    monkeypatch, compression, blocks, cores, tasks
):
    """A third task fills the time each task waits on its one block (measured: x1.07-1.10 at 8 MiB shards); with
    larger shards it only holds more memory (none faster at 64 MiB and up, +110-140 MB peak RSS)."""
    seen = []
    monkeypatch.setattr(executor.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(executor, "ordered_map", lambda fn, items, threads: seen.append(threads) or [])
    job = ShardJob("r.yaml", "", "s", (4, 2), "float32", compression, blocks, train=np.ones(4, bool))
    executor.InProcessExecutor().map(lambda job, item: item, job, [0, 1, 2, 3])
    executor.InProcessExecutor(threads=1).map(lambda job, item: item, job, [0, 1])
    assert seen == [tasks, 1]


class SerialStage:
    """Stage's interface, run in the caller's thread: what the build did before it had threads."""

    def __init__(self, fn, depth=1, name=""):
        self.fn = fn

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def put(self, item):
        self.fn(item)


def _serial(monkeypatch):
    monkeypatch.setattr(executor, "ordered_map", lambda fn, items, threads=2: ordered_map(fn, items, 1))
    monkeypatch.setattr(scan, "Stage", SerialStage)
    monkeypatch.setattr(scan, "prefetched", lambda produce, **kw: iter(produce()))
    monkeypatch.setattr(write, "Stage", SerialStage)


def _files(store):
    return {rel: e["sha256"] for rel, e in read_manifest(store)["files"].items() if rel != "zarr.json"}


@pytest.mark.parametrize(
    "storage, block_mb, tasks",
    [
        ({"shard_mb": 0.5}, 0.1, 2),  # shards of several blocks
        ({"shard_mb": 1000}, 0.1, 1),  # one shard
        ({"shard_mb": 0.5, "dtype": "float16"}, 0.1, 2),
        ({"shard_mb": 0.1}, 0.1, 3),  # shards of one block: a third task, results out of order the most
    ],
)
def test_the_pipelined_build_writes_the_serial_builds_store(tiny_raw, tmp_path, monkeypatch, storage, block_mb, tasks):
    recipe = demo_recipe(tmp_path, tiny_raw, storage=storage)
    threads = []
    with monkeypatch.context() as m:  # on 2 cores, whatever this machine has; the tasks each pass ran at once
        m.setattr(executor.os, "sched_getaffinity", lambda pid: {0, 1})
        real = executor.ordered_map
        m.setattr(
            executor, "ordered_map", lambda fn, items, n: threads.append(min(n, len(items))) or real(fn, items, n)
        )
        piped = build(recipe, tmp_path / "piped.zarr", progress=False, block_mb=block_mb).path
    assert max(threads) == tasks
    with monkeypatch.context() as m:
        _serial(m)
        serial = build(recipe, tmp_path / "serial.zarr", progress=False, block_mb=block_mb).path
    assert len(_files(piped)) > 5 and _files(piped) == _files(serial)


def _fail_mid_write(monkeypatch):
    """The sources fail to read step 300 the second time, in the write pass (a float16 store reads them again)."""
    real, reads = Sources.read, []

    def read(self, start, stop, channels=None, dtype=np.float64):
        if start <= 300 < stop:
            reads.append(start)
            if len(reads) > 1:
                raise SourceError(f"b.nc: cannot read steps {start}..{stop - 1}: NetCDF: HDF error")
        return real(self, start, stop, channels, dtype)

    monkeypatch.setattr(Sources, "read", read)


def test_a_bad_input_found_mid_write_is_the_serial_error_and_leaves_nothing(tiny_raw, tmp_path, monkeypatch):
    recipe = demo_recipe(tmp_path, tiny_raw, storage={"shard_mb": 0.5, "dtype": "float16"})
    errors = {}
    for name in ("piped", "serial"):
        out = tmp_path / f"{name}.zarr"
        with monkeypatch.context() as m:
            _fail_mid_write(m)
            if name == "serial":
                _serial(m)
            with pytest.raises(SourceError) as raised:
                build(recipe, out, progress=False, block_mb=0.1)
        errors[name] = str(raised.value)
        assert not out.exists() and not staging_path(out).exists()
    assert "cannot read steps" in errors["piped"] and errors["piped"] == errors["serial"]
    assert not any(t.name.startswith("canonstore-") for t in threading.enumerate())


def test_an_error_while_merging_the_scan_stops_every_task_before_cleanup(tiny_raw, tmp_path, monkeypatch):
    """An error in the scan's own loop (not in a task) closes the running tasks first: none is left to write
    into the staging that the failed build removes (review: they re-created `.partial` seconds later)."""
    from canonstore.preprocess import scan as scan_module
    from canonstore.preprocess.stats import RunningStats

    scan_shard = scan_module.scan_shard

    def slow_after_the_first(job, k, moments=True):
        if k >= 1:
            time.sleep(0.5)
        return scan_shard(job, k, moments)

    def broken_merge(self, *args, **kwargs):
        raise RuntimeError("merge failed")

    monkeypatch.setattr(scan_module, "scan_shard", slow_after_the_first)
    monkeypatch.setattr(RunningStats, "merge", broken_merge)
    out = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="merge failed"):
        build(demo_recipe(tmp_path, tiny_raw, storage={"shard_mb": 0.5}), out, progress=False, block_mb=0.1)
    assert not any(t.name.startswith("canonstore-") for t in threading.enumerate())
    time.sleep(1.0)  # a task left running would have written by now
    assert not out.exists() and not staging_path(out).exists()


def test_an_interrupted_build_stops_hashing_its_inputs(tiny_raw, tmp_path, monkeypatch):
    """Ctrl-C while the sources are opened ends the inputs' hashing within a block (review: it used to wait
    for every input to be hashed, the hours a first build of a large archive takes)."""
    import importlib

    from canonstore.formats import manifest

    build_module = importlib.import_module("canonstore.preprocess.build")  # the module, not the function

    updates, sha256 = [], hashlib.sha256

    class SlowDigest:
        def __init__(self):
            self._digest = sha256()

        def update(self, chunk):
            updates.append(len(chunk))
            time.sleep(0.05)
            self._digest.update(chunk)

        def hexdigest(self):
            return self._digest.hexdigest()

    def interrupted(recipe):
        time.sleep(0.3)  # hashing is under way
        raise KeyboardInterrupt

    monkeypatch.setattr(manifest.hashlib, "sha256", SlowDigest)
    blocks_of_4k = (4096,) + manifest.file_sha256.__defaults__[1:]  # many blocks per file
    monkeypatch.setattr(manifest.file_sha256, "__defaults__", blocks_of_4k)
    monkeypatch.setattr(build_module, "open_shared_sources", interrupted)
    blocks = sum(-(-p.stat().st_size // 4096) for p in tiny_raw.glob("*.nc"))
    with pytest.raises(KeyboardInterrupt):
        build(demo_recipe(tmp_path, tiny_raw), tmp_path / "s.zarr", progress=False)
    hashed = len(updates)
    time.sleep(0.3)
    assert 0 < len(updates) == hashed < blocks / 4  # stopped, and long before every block was hashed
