"""The raw-source baseline loader (RawSourceDataset) returns what the store dataset returns, read the slow way."""

from pathlib import Path

import pytest
import torch

from canonstore import open_dataset, open_store
from canonstore.errors import StoreError
from canonstore.loaders import RawSourceDataset
from canonstore.preprocess import build
from tests.helpers import write_recipe


@pytest.mark.parametrize("kwargs", [{}, {"history": 1, "lead": 2, "channels": ["z500", "msl"], "static": False}])
def test_same_tensors_as_the_store_dataset(tiny_store, kwargs):
    store = open_store(tiny_store)
    for split in ("train", "test"):
        fast, slow = open_dataset(store, split, **kwargs), RawSourceDataset(store, split, **kwargs)
        assert len(fast) == len(slow) and fast.input_channels == slow.input_channels
        for i in (0, 1, len(fast) // 2, len(fast) - 1):
            (fx, fy), (sx, sy) = fast[i], slow[i]
            assert sx.dtype == torch.float32
            torch.testing.assert_close(sx, fx, rtol=0, atol=1e-6)
            torch.testing.assert_close(sy, fy, rtol=0, atol=1e-6)


def test_packed_real_file_matches_too(tmp_path, real):
    recipe = write_recipe(
        tmp_path,
        name="era",
        sources=[str(real / "eraint_uvz.nc")],
        variables=["z", "u"],
        time_dim="month",
        splits={"by": "index", "train": [0, 1]},
    )
    store = open_store(build(recipe, tmp_path / "era.zarr", progress=False).path)
    fast, slow = open_dataset(store, "train", lead=1), RawSourceDataset(store, "train", lead=1)
    torch.testing.assert_close(slow[0][0], fast[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(slow[0][1], fast[0][1], rtol=0, atol=1e-6)


def test_refuses_a_recipe_the_store_was_not_built_from(tiny_store, tmp_path):
    store = open_store(tiny_store)
    changed = tmp_path / "changed.yaml"
    changed.write_text(Path(store.attrs["recipe_path"]).read_text() + "\n# edited\n")
    with pytest.raises(StoreError, match="differs from the one the store was built from"):
        RawSourceDataset(store, "train", recipe=changed)


def test_netcdf_dataset_is_the_deprecated_name_of_the_raw_source_dataset():
    import canonstore.loaders

    for _ in range(2):  # every use says so, not only the first
        with pytest.warns(DeprecationWarning, match="use RawSourceDataset") as caught:
            assert canonstore.loaders.NetCDFDataset is RawSourceDataset
        assert caught[0].filename == __file__  # the warning points at the caller's line
    assert "NetCDFDataset" not in canonstore.loaders.__all__
