"""Stores on object storage (FORMAT.md, "On object storage"), against moto's real S3 server: `build --out s3://`
read back by xarray, zarr-python and tensorstore; `verify` and `open_store` on the URL; publication killed with
-9 at random moments never leaves a readable mix; anything canonstore did not make is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.errors import StoreError
from canonstore.formats import open_store, verify_store
from canonstore.formats.manifest import read_manifest
from canonstore.objects import Objects
from canonstore.preprocess import build
from canonstore.preprocess.upload import publish_url
from canonstore.remote import URL, s3_store
from tests.helpers import ROOT, demo_recipe
from tests.wb2 import CREDENTIALS

QUIET = {"progress": False}


def zarr_store(url: str):
    return zarr.storage.ObjectStore(s3_store(URL(url)), read_only=True)


def objects_of(url: str) -> dict[str, bytes]:
    objects = Objects(url)
    return {key: objects.read(key) for key in objects.list()}


def local_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line(args) -> str:
    result = CliRunner().invoke(main, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_build_to_s3_is_read_by_xarray_zarr_and_tensorstore(s3, tiny_raw, tiny_store, tmp_path):
    url = f"s3://{s3}/stores/demo.zarr"
    result = build(demo_recipe(tmp_path, tiny_raw), url, **QUIET)
    assert result.built and result.path == url
    local = xr.open_zarr(tiny_store)
    remote = xr.open_zarr(zarr_store(url))  # plain xarray + zarr's ObjectStore: no canonstore
    np.testing.assert_array_equal(remote["data"][-40:].values, local["data"][-40:].values)  # (one GET per step)
    np.testing.assert_array_equal(remote["split"].values, local["split"].values)
    assert list(remote["channel"].values) == list(local["channel"].values)
    group = zarr.open_group(zarr_store(url), mode="r")  # zarr-python
    np.testing.assert_array_equal(group["data"][5], local["data"].values[5])
    assert not any(key.startswith("demo.zarr.partial") for key in Objects(f"s3://{s3}/stores").list())

    ts = pytest.importorskip("tensorstore")
    spec = {
        "driver": "zarr3",
        "kvstore": {
            "driver": "s3",
            "bucket": s3,
            "path": "stores/demo.zarr/data/",
            "endpoint": os.environ["AWS_ENDPOINT_URL"],
            "aws_region": CREDENTIALS["AWS_REGION"],
        },
    }
    try:
        array = ts.open(spec, read=True).result()
    except Exception as exc:  # its s3 driver cannot reach this endpoint: the same objects over plain http
        print(f"tensorstore's s3 driver: {exc}; reading over http instead")
        base = f"{os.environ['AWS_ENDPOINT_URL']}/{s3}/stores/demo.zarr/data/"
        array = ts.open({"driver": "zarr3", "kvstore": {"driver": "http", "base_url": base}}, read=True).result()
    np.testing.assert_array_equal(array[7:9].read().result(), local["data"].values[7:9])


def test_open_store_and_verify_on_a_url(s3, tiny_store):
    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    assert verify_store(url) == []
    store, local = open_store(url), open_store(tiny_store)
    assert store.remote and store.channels == local.channels and store.build_id == local.build_id
    np.testing.assert_array_equal(store.stats["mean"], local.stats["mean"])
    np.testing.assert_array_equal(store.split_indices("val"), local.split_indices("val"))
    np.testing.assert_array_equal(store.to_xarray()["data"][3].values, local.array[3])
    for attempt in (lambda: store.array, lambda: __import__("canonstore").open_dataset(url, "train")):
        with pytest.raises(StoreError, match="canonstore pull"):
            attempt()
    line = one_line(["append", url])
    assert url in line and "local store only" in line

    objects = Objects(url)  # one shard rewritten: verify names it; a changed label is refused on read
    shard = sorted(k for k in objects.list() if k.startswith("data/c/"))[1]
    objects.put(shard, b"\0" * len(objects.read(shard)))
    assert verify_store(url) == [f"{shard}: sha256 differs from the manifest (object changed or damaged)"]
    objects.put("split/c/0", objects.read("split/c/0")[::-1])
    with pytest.raises(StoreError, match="differs from the manifest the reader opened"):
        _ = open_store(url).splits


def test_inspect_a_url(s3, tiny_store):
    """`canonstore inspect s3://...` reads only metadata, labels, statistics and splits: the local summary."""
    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    shown = CliRunner().invoke(main, ["inspect", url])
    assert shown.exit_code == 0, shown.output
    assert shown.output == CliRunner().invoke(main, ["inspect", str(tiny_store)]).output.replace(str(tiny_store), url)
    assert one_line(["inspect", f"s3://{s3}/nothing.zarr"]).startswith(f"error: s3://{s3}/nothing.zarr: no such store")


def test_errors_are_one_line(s3, tiny_raw, tiny_store, tmp_path, monkeypatch):
    recipe = demo_recipe(tmp_path, tiny_raw)
    for args in (
        ["verify", "s3://no-such-bucket/demo.zarr"],
        ["build", str(recipe), "--out", "s3://no-such-bucket/d.zarr"],
    ):
        line = one_line(args)
        assert "s3://no-such-bucket/" in line and "does not exist" in line
    line = one_line(["verify", f"s3://{s3}/nothing.zarr"])
    assert "no such store" in line
    Objects(f"s3://{s3}").put("theirs.zarr/zarr.json", b"{}")  # not canonstore's: never overwritten
    with pytest.raises(StoreError, match="not a canonstore store"):
        publish_url(tiny_store, f"s3://{s3}/theirs.zarr")
    Objects(f"s3://{s3}").put("mine.zarr.partial/x", b"1")
    with pytest.raises(StoreError, match="did not make"):
        publish_url(tiny_store, f"s3://{s3}/mine.zarr")  # a staging prefix that is not ours either

    import moto.settings

    publish_url(tiny_store, f"s3://{s3}/demo.zarr")
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks keys from now on
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["AWS_SECRET_ACCESS_KEY"] + "-wrong")
    for args in (["verify", f"s3://{s3}/demo.zarr"], ["build", str(recipe), "--out", f"s3://{s3}/demo.zarr"]):
        line = one_line(args)
        assert f"s3://{s3}/" in line and "access denied" in line


PUBLISH = """
import sys
from pathlib import Path
from canonstore.preprocess.upload import publish_url
publish_url(Path(sys.argv[1]), sys.argv[2])
"""


def _publish(local, url) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISH, str(local), url], cwd=ROOT, env=dict(os.environ))


@pytest.mark.slow
def test_publish_killed_at_moments_spread_over_it_never_shows_a_mix(s3, tiny_store, gappy_store):
    """kill -9 at moments spread over a publish (upload and swap): the URL always holds a whole build that
    verifies, the previous one or the new one, or nothing that opens; the next publish completes."""
    url = f"s3://{s3}/k/store.zarr"
    builds = [tiny_store, gappy_store]
    manifests = {str(b): read_manifest(b) for b in builds}
    publish_url(builds[0], url)
    began = time.perf_counter()
    _publish(builds[1], url).wait()
    full = time.perf_counter() - began
    seen = {"previous": 0, "new": 0, "none": 0}
    # moments spread over the whole publish (upload, swap, after it), each round about 4 s
    for i, moment in enumerate((0.35, 0.5, 0.65, 0.8, 0.95)):
        previous, new = builds[(i + 1) % 2], builds[i % 2]
        process = _publish(new, url)
        time.sleep(moment * full)  # ~0.3 s is the interpreter starting
        process.send_signal(signal.SIGKILL)
        process.wait()
        try:
            group = zarr.open_group(zarr_store(url), mode="r")
        except Exception:  # nothing opens: a swap was under way; neither do xarray and canonstore
            with pytest.raises(Exception):  # noqa: B017 (zarr's own exception types)
                xr.open_zarr(zarr_store(url))
            with pytest.raises(StoreError):
                open_store(url)
            seen["none"] += 1
        else:
            # a kill after the root's copy leaves only the swap marker (the next publish removes it)
            assert all(p.startswith(".canonstore-staging") for p in verify_store(url))
            assert group["data"].shape[0] in (open_store(previous).shape[0], open_store(new).shape[0])
            files = read_manifest_remote(url)
            assert files in (manifests[str(previous)]["files"], manifests[str(new)]["files"])
            seen["previous" if files == manifests[str(previous)]["files"] else "new"] += 1
        publish_url(new, url)  # cleans what the kill left, then publishes
        assert verify_store(url) == [] and read_manifest_remote(url) == manifests[str(new)]["files"]
        assert objects_of(url) == local_files(new)  # bit for bit, nothing else
        assert not Objects(f"s3://{s3}/k/store.zarr.partial").list()
    print(seen)


def read_manifest_remote(url: str) -> dict:
    import json

    return json.loads(Objects(url).read("manifest.json"))["files"]


def test_publish_killed_after_its_last_copy_is_finished_by_the_next_build(s3, tiny_raw, tmp_path):
    """A swap marker left as a kill after the root's copy leaves it: the next build is not 'up to date' forever
    but finishes the publish; verify is clean."""
    from canonstore.preprocess.upload import marker

    url = f"s3://{s3}/demo.zarr"
    recipe = demo_recipe(tmp_path, tiny_raw)
    build(recipe, url, **QUIET)
    Objects(url).put(".canonstore-staging", marker("swap", "x"))
    assert any("publish" in p for p in verify_store(url))
    build(recipe, url, **QUIET)
    assert verify_store(url) == [] and Objects(url).read(".canonstore-staging") is None


def test_an_object_too_large_to_copy_is_refused_before_the_previous_store_is_touched(s3, tiny_store, monkeypatch):
    """S3 copies at most 5 GiB per request: the swap would fail after retracting the previous store's root."""
    from canonstore.formats.verify import verify_store
    from canonstore.preprocess import upload

    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    monkeypatch.setattr(upload, "COPY_LIMIT", 1000)  # the tiny store's shards are larger
    with pytest.raises(StoreError, match=r"S3 copies at most .* GiB in one request.*storage.shard_mb"):
        publish_url(tiny_store, url)
    assert verify_store(url) == []  # the previous store, untouched


def test_a_second_publish_of_one_url_on_this_machine_is_refused(s3, tiny_store):
    """Two publishes to one URL at once interleave: the second's clear_staging removed the first's staging, and
    the first's swap then copied a mix of two builds."""
    from canonstore.preprocess.upload import publish_lock

    url = f"s3://{s3}/demo.zarr"
    with publish_lock(url), pytest.raises(StoreError, match=rf"another publish of {url} is running"):
        publish_url(tiny_store, url)
    publish_url(tiny_store, url)  # once the first is done


def test_a_shard_missing_on_s3_is_an_error_not_nan(s3, tiny_store):
    """A `data` shard the manifest lists deleted from the bucket: `open_store(url).to_xarray()` read it as the fill
    value (NaN, 192 values of the missing steps) without an error; it names the object and says to verify."""
    url = f"s3://{s3}/demo.zarr"
    publish_url(tiny_store, url)
    objects = Objects(url)
    shard = "data/c/1/0/0/0"
    objects.delete([shard])
    steps = zarr.open_array(tiny_store / "data", mode="r").shards[0]  # the second shard begins here
    ds = open_store(url).to_xarray()
    assert not ds["data"][steps - 1].isnull().any()  # the first shard's last step reads (one request a step)
    with pytest.raises(StoreError, match=rf"{url}/{shard}: listed in the manifest but missing.*canonstore verify"):
        ds["data"][steps].load()


def test_a_forced_build_replaces_an_object_damaged_in_place(s3, tiny_raw, tmp_path):
    """A shard overwritten on the bucket (same size, zeros): `verify` names it, and `build --force` said it
    published while skipping the shard as 'unchanged' (the previous manifest's sha256 and size are the new
    build's), so the damage stayed. A forced build copies every object."""
    url = f"s3://{s3}/demo.zarr"
    recipe = demo_recipe(tmp_path, tiny_raw)
    build(recipe, url, **QUIET)
    objects = Objects(url)
    shard = sorted(k for k in objects.list() if k.startswith("data/c/"))[2]
    objects.put(shard, bytes(len(objects.read(shard))))
    assert verify_store(url) == [f"{shard}: sha256 differs from the manifest (object changed or damaged)"]
    build(recipe, url, force=True, **QUIET)
    assert verify_store(url) == []
