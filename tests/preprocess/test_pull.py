"""`canonstore pull s3://... DEST.zarr` against moto's real S3 server: the local store equals the remote one bit
for bit, memory-maps, resumes after kill -9 with fewer bytes fetched, and refuses what it cannot copy in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.errors import StoreError
from canonstore.formats import open_store, verify_store
from canonstore.objects import Objects
from canonstore.preprocess import build
from canonstore.preprocess.pull import pull
from canonstore.preprocess.upload import publish_url
from tests.helpers import ROOT, demo_recipe
from tests.preprocess.test_s3_stores import local_files, objects_of, one_line

QUIET = {"progress": False}


@pytest.fixture(scope="session")
def one_shard_store(tiny_raw, tmp_path_factory) -> Path:
    """The tiny demo as one shard of 38 MB (tiny_store has 37 of 1 MB): the object pull splits into ranges."""
    folder = tmp_path_factory.mktemp("one-shard")
    build(demo_recipe(folder, tiny_raw, storage={"shard_mb": 64}), folder / "demo.zarr", progress=False)
    return folder / "demo.zarr"


def test_pull_is_bit_for_bit(s3, tiny_store, tmp_path):
    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    dest = tmp_path / "demo.zarr"
    result = CliRunner().invoke(main, ["pull", url, str(dest)])
    assert result.exit_code == 0, result.output
    assert local_files(dest) == objects_of(url)  # every file, byte for byte, and nothing else
    assert verify_store(dest) == [] and not (tmp_path / "demo.zarr.partial").exists()
    store = open_store(dest)
    np.testing.assert_array_equal(store.array[::97], open_store(tiny_store).array[::97])  # memory-mapped
    assert store.build_id == open_store(url).build_id
    again = pull(url, dest, **QUIET)
    assert again.fetched == 0 and again.kept == again.files


def test_pull_again_over_a_damaged_copy_fetches_it_again(s3, tiny_store, tmp_path):
    """DEST holds the URL's manifest but a shard was deleted and another cut short: the pull said 'nothing to
    pull' (fetched 0, kept every file) and left the copy without them. It pulls the store again."""
    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    dest = tmp_path / "demo.zarr"
    pull(url, dest, **QUIET)
    first, second = sorted(dest.glob("data/c/*/0/0/0"))[:2]
    first.unlink()
    second.write_bytes(second.read_bytes()[:100])
    again = pull(url, dest, **QUIET)
    assert again.fetched > 0 and again.kept < again.files
    assert local_files(dest) == objects_of(url) and verify_store(dest) == []


@pytest.mark.parametrize("how", [{"whole_mb": 0, "part_mb": 0.1, "limit": 8}, {"whole_mb": 1e9}])
def test_pull_in_ranged_parts_or_whole_objects(s3, one_shard_store, tmp_path, how):
    """The shard split into ranges that complete out of order (the file still hashed in order as they
    arrive), or every object in one request: the same bytes as the remote store."""
    url = f"s3://{s3}/demo.zarr"
    publish_url(one_shard_store, url)
    dest = tmp_path / "demo.zarr"
    result = pull(url, dest, **QUIET, **how)
    assert result.fetched == sum(size for key, size in Objects(url).list().items() if key != "manifest.json")
    assert local_files(dest) == objects_of(url) and verify_store(dest) == []


@pytest.mark.parametrize("how", [{"whole_mb": 0, "part_mb": 0.1}, {}])
def test_pull_refuses_an_object_that_is_not_the_manifests(s3, one_shard_store, tmp_path, how):
    """An object changed on the server (same size, other bytes): refused in one line naming it; no DEST, and
    the object is not kept in the staging folder under its name."""
    url = f"s3://{s3}/demo.zarr"
    publish_url(one_shard_store, url)
    objects = Objects(url)
    shard = next(key for key in sorted(objects.list()) if key.startswith("data/c/"))
    objects.put(shard, bytes(len(objects.read(shard))))
    dest = tmp_path / "demo.zarr"
    with pytest.raises(StoreError, match=f"{shard}: its size or sha256 is not the manifest's"):
        pull(url, dest, **QUIET, **how)
    assert not dest.exists() and not (tmp_path / "demo.zarr.partial" / shard).exists()


PULL = """
import sys
from canonstore.preprocess import build
from canonstore.preprocess.pull import pull
pull(sys.argv[1], sys.argv[2], progress=False, limit=1, part_mb=0.0625)
"""


def test_pull_resumes_after_kill(s3, tiny_store, tmp_path):
    """kill -9 once some files are complete: the next pull keeps them (size and sha256 checked) and fetches
    fewer bytes than the whole store; the result is the remote store bit for bit."""
    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    dest, total = tmp_path / "demo.zarr", sum(Objects(url).list().values())
    staging = tmp_path / "demo.zarr.partial"
    process = subprocess.Popen([sys.executable, "-c", PULL, url, str(dest)], cwd=ROOT, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        shards = list(staging.glob("data/c/*/0/0/0")) if staging.is_dir() else []
        if len(shards) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not dest.exists() and staging.is_dir(), "the pull finished before it could be killed"
    result = pull(url, dest, **QUIET)
    assert result.kept >= 2 and 0 < result.fetched < total
    assert local_files(dest) == objects_of(url)


def test_pull_refusals_are_one_line(s3, tiny_store, tmp_path):
    line = one_line(["pull", "s3://no-such-bucket/demo.zarr", str(tmp_path / "d.zarr")])
    assert "s3://no-such-bucket/demo.zarr" in line and "does not exist" in line
    url = f"s3://{s3}/demo.zarr"
    Objects(url).put(".canonstore-staging", b'{"made_by": "canonstore", "kind": "swap"}')  # a swap cut short
    line = one_line(["pull", url, str(tmp_path / "d.zarr")])
    assert url in line and "publish is under way or was interrupted" in line
    publish_url(tiny_store, url)  # finishes over it
    theirs = tmp_path / "theirs.zarr"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a canonstore store"):
        pull(url, theirs, **QUIET)
    assert (theirs / "notes.txt").read_text() == "mine"


def test_pull_refuses_a_manifest_key_outside_dest(s3, tiny_store, tmp_path):
    """A manifest listing an absolute key (and an object there): pull refuses in one line and writes nothing
    outside DEST (nor beside the outside file)."""
    import hashlib
    import json

    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("mine")
    evil = b"theirs"
    objects = Objects(url)
    manifest = json.loads(objects.read("manifest.json"))
    manifest["files"][str(victim)] = {"size": len(evil), "sha256": hashlib.sha256(evil).hexdigest()}
    objects.put(str(victim).lstrip("/"), evil)
    objects.put("manifest.json", json.dumps(manifest).encode())
    line = one_line(["pull", url, str(tmp_path / "d.zarr")])
    assert str(victim) in line and "absolute" in line
    assert victim.read_text() == "mine" and sorted(os.listdir(victim.parent)) == ["victim.txt"]
    with pytest.raises(StoreError, match="absolute"):
        open_store(url)


def test_pull_during_a_publish_says_so(s3, tiny_store, tmp_path):
    """A swap under way at the URL (marker at the root, the root zarr.json deleted, the manifest already copied):
    one line saying so, and nothing at DEST."""
    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    objects = Objects(url)
    objects.put(".canonstore-staging", b'{"made_by": "canonstore", "kind": "swap"}')
    objects.delete(["zarr.json"])
    with pytest.raises(StoreError, match="publish is under way or was interrupted") as caught:
        pull(url, tmp_path / "d.zarr", **QUIET)
    assert url in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "d.zarr").exists()


@pytest.mark.parametrize("how", [{}, {"whole_mb": 0, "part_mb": 0.1}])
def test_pull_writes_back_every_byte_and_syncs_before_the_rename(s3, one_shard_store, tmp_path, monkeypatch, how):
    """Writeback starts for every byte as it is written; the one sync sees every file and the manifest, and
    comes before the rename that publishes the copy."""
    import canonstore.preprocess.pull as module

    url = f"s3://{s3}/demo.zarr"
    publish_url(one_shard_store, url)
    written, events = [0], []
    start_writeback, sync_tree, replace_folder = module.start_writeback, module.sync_tree, module.replace_folder

    def writeback(fd, offset, nbytes):
        written[0] += nbytes
        start_writeback(fd, offset, nbytes)

    def sync(folder):
        events.append(("sync", sorted(local_files(folder))))
        sync_tree(folder)

    def rename(staging, dest, kind):
        events.append(("rename", None))
        replace_folder(staging, dest, kind)

    monkeypatch.setattr(module, "start_writeback", writeback)
    monkeypatch.setattr(module, "sync_tree", sync)
    monkeypatch.setattr(module, "replace_folder", rename)
    dest = tmp_path / "demo.zarr"
    result = pull(url, dest, **QUIET, **how)
    assert written[0] == result.fetched > 0
    assert [kind for kind, _ in events] == ["sync", "rename"]
    assert events[0][1] == sorted([*objects_of(url), ".canonstore-staging"])  # the manifest among them


def test_large_objects_are_split_among_the_connections_not_into_fixed_parts():
    """Parts of the large objects' bytes over `limit`, rounded up to part_mb: at most about `limit` requests for
    them; as many large objects as connections come whole."""
    from canonstore.preprocess.pull import _Sizes

    mib = 1 << 20
    one = _Sizes.shared([440_000_000, 600], limit=16, whole_mb=256, part_mb=8)
    assert one.part == 32 * mib and len(one.parts(440_000_000)) == 14 and one.parts(600) == [(0, 600)]
    three = _Sizes.shared([2**30] * 3, limit=16, whole_mb=256, part_mb=8)
    assert len(three.parts(2**30)) == 6  # 18 requests for 16 connections
    many = _Sizes.shared([2**30] * 16 + [3 * 2**30], limit=16, whole_mb=256, part_mb=8)
    assert many.parts(2**30) == [(0, 2**30)] and len(many.parts(3 * 2**30)) == 3
    small = _Sizes.shared([55_000_000, 600], limit=16, whole_mb=0, part_mb=8)
    assert small.part == 8 * mib and len(small.parts(55_000_000)) == 7  # never parts under part_mb
    # edges: an empty object, one exactly at whole_mb, one a byte above it, a single connection
    assert one.parts(0) == [(0, 0)] and one.parts(256 * mib) == [(0, 256 * mib)]
    above = one.parts(256 * mib + 1)  # a byte above whole_mb: 32 MiB parts, the last of one byte, no gap
    assert len(above) == 9 and above[-1] == (256 * mib, 256 * mib + 1)
    assert all(a[1] == b[0] for a, b in zip(above, above[1:]))
    single = _Sizes.shared([2**30, 600], limit=1, whole_mb=0, part_mb=8)
    assert single.parts(2**30) == [(0, 2**30)] and single.parts(0) == [(0, 0)]


def test_pull_requests_no_more_parts_than_connections(s3, one_shard_store, tmp_path, monkeypatch):
    """Every object above whole_mb split among `limit` connections: the 38 MB shard in `limit` ranged requests
    (not 38 MB / part_mb), the small objects whole; `pull --whole-mb` on the command line reaches the policy."""
    url = f"s3://{s3}/demo.zarr"
    publish_url(one_shard_store, url)
    ranges = []
    stream = Objects.stream

    def counted(self, key, chunk=8 << 20, span=None):
        if span is not None:
            ranges.append((key, *span))
        return stream(self, key, chunk, span)

    monkeypatch.setattr(Objects, "stream", counted)
    shard = "data/c/0/0/0/0"
    result = pull(url, tmp_path / "a.zarr", **QUIET, whole_mb=0, part_mb=0.0625, limit=4)
    assert local_files(tmp_path / "a.zarr") == objects_of(url) and result.fetched > 0
    assert {key for key, _, _ in ranges} == {shard} and len(ranges) == 4
    ranges.clear()
    result = CliRunner().invoke(main, ["pull", url, str(tmp_path / "b.zarr"), "--whole-mb", "0"])
    assert result.exit_code == 0, result.output
    assert len(ranges) == 5 and local_files(tmp_path / "b.zarr") == objects_of(url)  # 38 MB / 16 -> 8 MiB parts
    ranges.clear()
    assert CliRunner().invoke(main, ["pull", url, str(tmp_path / "c.zarr")]).exit_code == 0
    assert not ranges  # under the default 256 MiB: one request


def test_a_ranged_part_is_streamed_never_held_whole_in_memory(s3, one_shard_store, tmp_path, monkeypatch):
    """Two connections: the 38 MB shard in two ranged requests of up to 24 MiB, each written 8 MiB at a time (a
    part is the large objects' bytes over the connections: a 5 GiB shard would otherwise hold 320 MiB a request)."""
    import canonstore.preprocess.pull as module

    url = f"s3://{s3}/demo.zarr"
    publish_url(one_shard_store, url)
    pieces, placed = [], module._placed

    def recorded(fd, data, offset):
        pieces.append(len(data))
        placed(fd, data, offset)

    monkeypatch.setattr(module, "_placed", recorded)
    result = pull(url, tmp_path / "a.zarr", **QUIET, whole_mb=0, limit=2)
    shard = (one_shard_store / "data" / "c" / "0" / "0" / "0" / "0").stat().st_size
    assert local_files(tmp_path / "a.zarr") == objects_of(url)
    assert sum(pieces) == result.fetched > shard  # every object's bytes went through `_placed`, the shard's too
    assert len(pieces) >= 4 and max(pieces) <= 16 << 20  # obstore's pieces: at least 8 MiB


@pytest.mark.parametrize("sizes", [{"whole_mb": float("nan")}, {"whole_mb": float("inf")}, {"part_mb": -1.0}])
def test_a_part_size_that_is_no_size_is_refused_before_anything_is_made(tmp_path, sizes):
    with pytest.raises(ValueError, match="finite numbers of MiB"):
        pull("s3://no-such-bucket/a.zarr", tmp_path / "a.zarr", **QUIET, **sizes)
    assert not list(tmp_path.iterdir())
