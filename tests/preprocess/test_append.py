"""Appending new dates: equal to a full build of the extended recipe, train statistics unchanged,
refused when it would change them, atomic under kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner

from canonstore import open_store
from canonstore.cli import main
from canonstore.errors import StoreError
from canonstore.formats import verify_store
from canonstore.formats.manifest import data_checksums, read_manifest
from canonstore.loaders import StoreDataset
from canonstore.preprocess import build
from canonstore.preprocess.append import append
from tests.helpers import demo_recipe, write_recipe

silent = {"progress": False}


def _arrays(path) -> dict:
    group = zarr.open_group(path, mode="r")
    return {name: group[name][...] for name in group.array_keys() if name != "data"}


@pytest.mark.parametrize("shard_mb", [1, 1024])  # many shards (a partial last one), and one shard
def test_append_equals_a_full_build_of_the_extended_recipe(tiny_raw, tmp_path, shard_mb, said):
    storage = {"shard_mb": shard_mb}
    recipe = demo_recipe(tmp_path, tiny_raw, time={"end": "2002-03-31"}, storage=storage)
    out = tmp_path / "demo.zarr"
    build(recipe, out, **silent)
    before = open_store(out)
    old_steps, old_stats = before.shape[0], before.stats
    old_files = read_manifest(out)["files"]
    dataset = StoreDataset(out, "train")  # made before the append

    demo_recipe(tmp_path, tiny_raw, time={"end": "2002-12-31"}, storage=storage)  # the same recipe, a later end
    result = build(recipe, out, progress=False)  # what `make intermediate` runs
    assert result.built and any(line.startswith("appending ") for line in said()), said()
    (tmp_path / "full").mkdir()
    full = build(
        demo_recipe(tmp_path / "full", tiny_raw, time={"end": "2002-12-31"}, storage=storage),
        tmp_path / "full.zarr",
        **silent,
    )

    appended, rebuilt = open_store(out), open_store(full.path)
    assert appended.shape == rebuilt.shape and appended.shape[0] > old_steps
    assert data_checksums(read_manifest(out)) == data_checksums(read_manifest(full.path))  # data bit for bit
    np.testing.assert_array_equal(np.asarray(appended.array), np.asarray(zarr.open_array(out / "data", mode="r")[...]))
    ours, theirs = _arrays(out), _arrays(full.path)
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    for name, values in old_stats.items():
        np.testing.assert_array_equal(appended.stats[name], values)
    assert (appended.splits[old_steps:] == 2).all()  # new steps: the recipe's rule (test year 2002)
    assert verify_store(out) == []
    history = appended.attrs["history"]
    assert [h["kind"] for h in history] == ["build", "append"] and history[1]["steps"] == [old_steps, appended.shape[0]]
    new_files = read_manifest(out)["files"]
    if shard_mb == 1:  # full shards before the last one are the old files themselves (hard links), never rewritten
        first = sorted(k for k in old_files if k.startswith("data/c/"))[0]
        assert new_files[first] == old_files[first] and os.stat(out / first).st_nlink == 1
    with pytest.raises(StoreError, match="rebuilt after this dataset was created"):
        _ = dataset.array


def test_append_into_the_train_range_is_refused_saying_to_rebuild(tiny_raw, tmp_path):
    recipe = demo_recipe(tmp_path, tiny_raw, time={"end": "2000-06-30"}, splits={"train": [2000, 2001]})
    out = tmp_path / "demo.zarr"
    build(recipe, out, **silent)
    before = read_manifest(out)
    demo_recipe(tmp_path, tiny_raw, time={"end": "2002-12-31"}, splits={"train": [2000, 2001]})
    with pytest.raises(StoreError, match=r"cannot append .*falls in the train split.*rebuild it"):
        append(out, **silent)
    assert read_manifest(out) == before and verify_store(out) == []


def test_append_with_a_changed_recipe_is_refused_and_the_build_rebuilds(tiny_raw, tmp_path, said):
    recipe = demo_recipe(tmp_path, tiny_raw, time={"end": "2002-06-30"})
    out = tmp_path / "demo.zarr"
    build(recipe, out, **silent)
    demo_recipe(tmp_path, tiny_raw, time={"end": "2002-12-31"}, variables=["z", "t"])
    result = CliRunner().invoke(main, ["append", str(out), "--quiet"])
    assert result.exit_code == 1 and "the recipe changed in variables" in result.output
    build(recipe, out, progress=False)
    assert any("rebuilding" in line and "variables" in line for line in said())
    assert {c.rstrip("0123456789") for c in open_store(out).channels} == {"z", "t"}


def test_kill_during_an_append_leaves_the_previous_store_intact(tiny_raw, tmp_path):
    splits = {"train": [2000, 2000], "val": [2001, 2002]}
    recipe = demo_recipe(tmp_path, tiny_raw, time={"end": "2001-06-30"}, splits=splits, storage={"shard_mb": 0.25})
    out = tmp_path / "demo.zarr"
    build(recipe, out, **silent)
    before = read_manifest(out)
    demo_recipe(tmp_path, tiny_raw, time={"end": "2002-12-31"}, splits=splits, storage={"shard_mb": 0.25})
    old_shards = open_store(out).attrs["layout"]["shards"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "canonstore", "append", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    staging = out.with_name(out.name + ".partial")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # kill once new shards are being written
        if len(list((staging / "data" / "c").glob("*"))) > old_shards + 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the append finished before it could be killed"
    assert read_manifest(out) == before and verify_store(out) == []
    assert (
        json.loads((out / "zarr.json").read_text())["attributes"]["canonstore"]
        .get("history", [{}])[-1]
        .get("kind", "build")
        == "build"
    )
    build(recipe, out, **silent)  # the next build appends over the leftover partial
    assert open_store(out).attrs["history"][-1]["kind"] == "append" and verify_store(out) == []


def test_append_reads_unquoted_360_day_dates_in_both_recipes(tmp_path):
    from tests.helpers import UNQUOTED, monthly_360_day

    monthly_360_day(tmp_path / "tas.nc")
    recipe = tmp_path / "hadgem.yaml"
    recipe.write_text(UNQUOTED.replace("end: 2031-02-30", "end: 2030-12-30"))  # the store's recipe text, verbatim
    out = build(recipe, tmp_path / "hadgem.zarr", **silent).path
    recipe.write_text(UNQUOTED)
    append(out, **silent)
    store = open_store(out)
    assert store.attrs["history"][-1]["kind"] == "append"
    assert [t.strftime("%Y-%m-%d") for t in store.time[-3:]] == ["2030-12-16", "2031-01-16", "2031-02-16"]


def test_appended_steps_finer_than_the_stores_step_are_an_error(tmp_path):
    """A 6-hourly store, then more 3-hourly data than it holds: the store's step decides, not the new median."""
    from canonstore.errors import SourceError
    from tests.helpers import t2m_file

    t2m_file(tmp_path / "a.nc", pd.date_range("2020-01-01", periods=40, freq="6h"))
    recipe = write_recipe(
        tmp_path,
        name="six",
        sources=["*.nc"],
        time_gaps="allow",
        splits={"by": "index", "train": [0, 29], "test": [30, 999]},
    )
    out = build(recipe, tmp_path / "six.zarr", **silent).path
    before = read_manifest(out)
    t2m_file(tmp_path / "b.nc", pd.date_range("2020-01-11", periods=100, freq="3h"))
    with pytest.raises(SourceError) as err:
        append(out, **silent)
    for part in ("3 hours", "usual 6 hours", "2020-01-11T00:00", "2020-01-11T03:00", "b.nc"):
        assert part in str(err.value), (part, str(err.value))
    assert read_manifest(out) == before and open_store(out).gaps.size == 0
