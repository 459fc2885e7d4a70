"""`canonstore export STORE --to npy DIR`: plain .npy files and meta.json, read back with NumPy alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from canonstore import open_store
from canonstore.cli import main
from canonstore.errors import StoreError
from canonstore.formats import npy


def test_exported_splits_match_the_store_bit_for_bit(tiny_store, tmp_path):
    out = tmp_path / "export"
    # ~50 kB blocks: the copy goes block by block, across the store's shards
    npy.export_npy(tiny_store, out, block_mb=0.05)
    store = open_store(tiny_store)
    meta = json.loads((out / "meta.json").read_text())
    for split in ("train", "val", "test"):
        with open(out / f"{split}.npy", "rb") as f:
            assert np.lib.format.read_magic(f) == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert not fortran and dtype == np.float32
        loaded = np.load(out / f"{split}.npy", mmap_mode="r")  # NumPy alone
        steps = store.split_indices(split)
        expected = np.stack([np.asarray(store.array[int(i)]) for i in steps])
        assert loaded.shape == expected.shape == tuple(meta["splits"][split]["shape"])
        assert loaded.tobytes() == expected.tobytes()
        assert meta["splits"][split]["steps"] == steps.tolist()
        assert meta["splits"][split]["time"] == [str(np.datetime_as_string(t, unit="s")) for t in store.time[steps]]
    assert meta["channels"] == store.channels and meta["dims"] == list(store.dims)
    assert meta["stats"]["mean"] == store.stats["mean"].tolist()  # float64 exactly, through JSON
    assert meta["provenance"]["store_attrs"]["recipe_sha256"] == store.attrs["recipe_sha256"]
    assert sorted(meta["static"]["channels"]) == sorted(store.static)
    assert np.load(out / "static.npy").shape == (len(store.static),) + store.shape[2:]
    physical = (
        loaded[:2].astype(np.float64) * np.array(meta["stats"]["std"])[:, None, None]
        + np.array(meta["stats"]["mean"])[:, None, None]
    )
    np.testing.assert_allclose(physical, store.denormalise(expected[:2].astype(np.float64)))


def test_the_cli_exports_and_never_overwrites_unasked(tiny_store, tmp_path):
    out = tmp_path / "npy"
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tiny_store), "--to", "npy", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "static.npy", "test.npy", "train.npy", "val.npy"]
    again = runner.invoke(main, ["export", str(tiny_store), "--to", "npy", str(out)])
    assert again.exit_code == 1 and "exists" in again.output and "--overwrite" in again.output
    assert runner.invoke(main, ["export", str(tiny_store), "--to", "npy", str(out), "--overwrite"]).exit_code == 0


def test_a_failed_export_leaves_nothing(tiny_store, tmp_path, monkeypatch):
    real = npy._write_split

    def fail_on_val(read, steps, path, *args):
        if path.name == "val.npy":
            raise OSError(28, "No space left on device", str(path))
        return real(read, steps, path, *args)

    monkeypatch.setattr(npy, "_write_split", fail_on_val)
    with pytest.raises(OSError):
        npy.export_npy(tiny_store, tmp_path / "npy")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError):
        npy.export_npy(tmp_path / "missing", tmp_path / "npy")


def _export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def _one_error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("export: ")]  # progress
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_overwrite_replaces_only_a_previous_export(tiny_store, tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / "figs").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("years of work")
    (thesis / "figs" / "map.pdf").write_text("figure")
    line = _one_error_line(_export(tiny_store, "--to", "npy", thesis, "--overwrite"))
    assert "is not a canonstore export" in line and "--overwrite replaces only a previous" in line
    assert (thesis / "thesis.tex").read_text() == "years of work" and (thesis / "figs" / "map.pdf").is_file()

    out = tmp_path / "npy"
    assert _export(tiny_store, "--to", "npy", out).exit_code == 0
    (out / "notes.txt").write_text("my notes")  # a user's file put into an export
    line = _one_error_line(_export(tiny_store, "--to", "npy", out, "--overwrite"))
    assert "holds notes.txt, which the export did not write" in line
    assert (out / "notes.txt").read_text() == "my notes"
    (out / "notes.txt").unlink()
    assert _export(tiny_store, "--to", "npy", out, "--overwrite").exit_code == 0  # a previous export: replaced
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "static.npy", "test.npy", "train.npy", "val.npy"]


@pytest.mark.parametrize("where", ["the store", "the folder holding the store", "inside the store"])
def test_export_never_goes_into_over_or_around_the_store(tiny_store, tmp_path, where):
    import shutil

    from canonstore.formats import verify_store

    store = shutil.copytree(tiny_store, tmp_path / "holder" / "demo.zarr")
    target = {"the store": store, "the folder holding the store": store.parent, "inside the store": store / "export"}[
        where
    ]
    line = _one_error_line(_export(store, "--to", "npy", target, "--overwrite"))
    assert "export to a folder outside it" in line
    assert verify_store(store) == [] and not (store / "export").exists()


def test_a_users_folder_named_like_the_staging_is_never_deleted(tiny_store, tmp_path):
    mine = tmp_path / "npy.partial"
    mine.mkdir()
    (mine / "results.csv").write_text("1,2,3")
    line = _one_error_line(_export(tiny_store, "--to", "npy", tmp_path / "npy"))
    assert str(mine) in line and "not canonstore's" in line
    assert (mine / "results.csv").read_text() == "1,2,3" and not (tmp_path / "npy").exists()


def test_an_export_half_removed_by_a_kill_is_cleared_by_the_next_export(tiny_store, tmp_path):
    import shutil

    out = tmp_path / "npy"
    npy.export_npy(tiny_store, out)
    # What a kill leaves just after the publishing swap: the previous export, marked as canonstore's before
    # the swap, partly removed (the marker goes last) at npy.partial; where the filesystem cannot swap, at
    # npy.old-<pid>.
    for left in (tmp_path / "npy.partial", tmp_path / "npy.old-123"):
        shutil.copytree(out, left)
        (left / ".canonstore-staging").write_text(json.dumps({"made_by": "canonstore", "kind": "npy export"}))
        (left / "train.npy").unlink()
    npy.export_npy(tiny_store, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npy"]


def test_a_full_disk_names_the_file_being_written(tiny_store, tmp_path, monkeypatch):
    import errno
    import os

    def full(f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write says it: no file name

    monkeypatch.setattr(np.lib.format, "write_array_header_1_0", full)
    line = _one_error_line(_export(tiny_store, "--to", "npy", tmp_path / "npy"))
    assert "npy.partial/train.npy" in line and "No space left on device" in line
    assert list(tmp_path.iterdir()) == []


def test_an_export_while_a_rebuild_publishes_fails_instead_of_mixing_builds(tiny_raw, tmp_path, monkeypatch):
    from canonstore.preprocess import build
    from tests.helpers import demo_recipe

    silent = {"progress": False}
    store = build(demo_recipe(tmp_path, tiny_raw), tmp_path / "demo.zarr", **silent).path
    real = npy.block_reader

    def rebuilt_after_the_first_block(opened):
        read, blocks = real(opened), []

        def then_rebuild(a, b):
            if len(blocks) == 1:  # a shorter train year: other statistics, other normalised values
                build(
                    demo_recipe(tmp_path, tiny_raw, time={"start": "2000-03-01", "end": "2002-12-31"}), store, **silent
                )
            blocks.append((a, b))
            return read(a, b)

        return then_rebuild

    monkeypatch.setattr(npy, "block_reader", rebuilt_after_the_first_block)
    with pytest.raises(StoreError, match="was rebuilt or replaced after it was opened"):
        npy.export_npy(store, tmp_path / "npy", block_mb=0.05)
    assert not (tmp_path / "npy").exists() and not (tmp_path / "npy.partial").exists()
