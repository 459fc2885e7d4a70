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
    npy.export_npy(tiny_store, out, block_mb=0.05, log=lambda *_: None)
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
    physical = loaded[:2].astype(np.float64) * np.array(meta["stats"]["std"])[:, None, None] \
        + np.array(meta["stats"]["mean"])[:, None, None]
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
        npy.export_npy(tiny_store, tmp_path / "npy", log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError):
        npy.export_npy(tmp_path / "missing", tmp_path / "npy", log=lambda *_: None)
