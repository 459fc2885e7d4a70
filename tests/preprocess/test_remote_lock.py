"""One publisher per store URL across machines (`preprocess.remote_lock`), against moto's real S3 server: the lock
object is taken by a conditional PUT, a second publisher is refused in one line naming the URL and the holder, the
lock goes away after a publish that succeeded or failed, and a killed holder's lock is removed only explicitly."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.errors import StoreError
from canonstore.formats import open_store
from canonstore.objects import Objects
from canonstore.preprocess.remote_lock import remote_lock
from canonstore.preprocess.upload import publish_url
from tests.helpers import demo_recipe
from tests.preprocess.test_s3_stores import one_line

LOCK = "demo.zarr.canonstore-lock"


def _lock_of(host: str, pid: int, hours_ago: float) -> bytes:
    created = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours_ago)
    record = {"made_by": "canonstore", "kind": "publish-lock", "user": "ana", "host": host, "pid": pid}
    return json.dumps({**record, "created": created.isoformat(timespec="seconds"), "token": "theirs"}).encode()


def test_the_server_takes_a_conditional_put(s3):
    """moto's S3 server honours PUT If-None-Match: * (what the lock relies on): the second create fails."""
    objects = Objects(f"s3://{s3}")
    assert objects.create("once", b"first") is True
    assert objects.create("once", b"second") is False
    assert objects.read("once") == b"first"


def test_a_second_publisher_is_refused_and_the_lock_released(s3, tiny_store):
    url, parent = f"s3://{s3}/demo.zarr", Objects(f"s3://{s3}")
    with remote_lock(parent, "demo.zarr"):  # the first publisher, mid-publish
        holder = json.loads(parent.read(LOCK))
        with pytest.raises(StoreError) as refused:
            publish_url(tiny_store, url)
        line = str(refused.value)
        assert "\n" not in line and line.startswith(f"{url}: another publish holds {url}.canonstore-lock")
        assert f"{holder['host']}, pid {os.getpid()}" in line and "wait for it to finish" in line
        assert Objects(url).list() == {} and parent.read(LOCK) is not None  # the second wrote nothing
    assert parent.read(LOCK) is None  # released by the first
    publish_url(tiny_store, url)
    assert parent.read(LOCK) is None and open_store(url).build_id  # released after a publish that succeeded
    Objects(url).put("notes.txt", b"mine")
    with pytest.raises(StoreError, match="not the store's"):
        publish_url(tiny_store, url)
    assert parent.read(LOCK) is None  # and after one that failed


def test_another_machines_lock_is_refused_until_force_unlock(s3, tiny_raw, tmp_path, said):
    url, parent = f"s3://{s3}/demo.zarr", Objects(f"s3://{s3}")
    recipe = str(demo_recipe(tmp_path, tiny_raw))
    parent.put(LOCK, _lock_of("gpu-node-7", 4242, hours_ago=1))
    line = one_line(["build", recipe, "--out", url])
    assert url in line and "ana on gpu-node-7, pid 4242" in line and "wait for it to finish" in line
    parent.put(LOCK, _lock_of("gpu-node-7", 4242, hours_ago=30))  # past the lease: named, still not taken
    line = one_line(["build", recipe, "--out", url])
    assert "older than the 24 h lease, probably left by a killed build" in line and "--force-unlock" in line
    assert Objects(url).list() == {}
    result = CliRunner().invoke(main, ["build", recipe, "--out", url, "--force-unlock", "--quiet"])
    assert result.exit_code == 0, result.output
    assert parent.read(LOCK) is None and open_store(url).build_id
    assert any("removed by --force-unlock" in m and "gpu-node-7" in m for m in said())


def test_a_lock_left_on_this_machine_by_a_dead_process_is_removed(s3, tiny_store, said):
    url, parent = f"s3://{s3}/demo.zarr", Objects(f"s3://{s3}")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    parent.put(LOCK, _lock_of(os.uname().nodename, int(gone.stdout), hours_ago=0))
    publish_url(tiny_store, url)
    assert parent.read(LOCK) is None and open_store(url).build_id
    assert any("left by a killed publish on this machine" in m for m in said())
    parent.put(LOCK, b"not json")  # an object canonstore did not write: named, never removed
    with pytest.raises(StoreError, match="an object canonstore did not write"):
        publish_url(tiny_store, url)
    assert parent.read(LOCK) == b"not json"
