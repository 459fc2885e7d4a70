"""The local staging folder of `build --out s3://` (`preprocess.upload_staging`): a build killed with -9 leaves it
under TMPDIR and the next build removes it, and never a folder canonstore did not mark or whose build runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from canonstore.atomic import MARKER
from canonstore.formats import open_store
from canonstore.preprocess import build
from canonstore.preprocess.upload_staging import PREFIX, remove_stale
from tests.helpers import ROOT, demo_recipe

HOLD = """
import sys, time
from pathlib import Path
from canonstore.preprocess.upload_staging import upload_folder
with upload_folder(Path(sys.argv[1])) as folder:
    print(folder, flush=True)
    time.sleep(600)
"""


def _wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_build_to_s3_leaves_its_folder_and_the_next_build_removes_it(s3, tiny_raw, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    url, recipe = f"s3://{s3}/demo.zarr", demo_recipe(tmp_path, tiny_raw)
    command = [sys.executable, "-m", "canonstore", "build", str(recipe), "--out", url, "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "TMPDIR": str(temp)})
    _wait_for(lambda: any(temp.glob(f"{PREFIX}*/demo.zarr*")) or process.poll() is not None)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = list(temp.glob(f"{PREFIX}*"))
    assert len(left) == 1 and (left[0] / MARKER).is_file(), "the build finished before it could be killed"
    theirs = temp / f"{PREFIX}notes"  # the same prefix, not canonstore's: kept
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    build(recipe, url, progress=False)
    assert list(temp.glob(f"{PREFIX}*")) == [theirs] and open_store(url).build_id


def test_a_folder_whose_build_runs_is_kept(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        held = tmp_path / os.path.basename(process.stdout.readline().strip())
        other = tmp_path / f"{PREFIX}other"  # canonstore's marker of another kind: not an upload build's
        other.mkdir()
        (other / MARKER).write_text('{"made_by": "canonstore", "kind": "store"}')
        assert remove_stale(tmp_path) == [] and held.is_dir() and other.is_dir()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert remove_stale(tmp_path) == [held] and not held.exists() and other.is_dir()
