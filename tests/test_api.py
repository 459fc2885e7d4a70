"""The public API (canonstore/__init__.py): light to import, its names loaded on first use."""

import subprocess
import sys

import numpy as np
import pytest

HEAVY = ("xarray", "zarr", "torch", "dask", "netCDF4")


def imported_after(statement: str) -> list[str]:
    """The heavy libraries loaded by `statement` in a fresh interpreter."""
    script = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.split()


@pytest.mark.parametrize("statement", ["import canonstore.errors", "import canonstore", "import canonstore.loaders"])
def test_importing_the_package_loads_no_heavy_library(statement):
    assert imported_after(statement) == []


def test_names_load_on_first_use():
    opened = imported_after("import canonstore; canonstore.open_store")
    assert {"xarray", "zarr"} <= set(opened) and "torch" not in opened
    assert "torch" in imported_after("import canonstore.loaders; canonstore.loaders.BatchLoader")


def test_version_and_names_are_listed():
    import canonstore

    assert isinstance(canonstore.__version__, str)
    assert {"open_store", "__version__"} <= set(dir(canonstore)) and "open_store" in canonstore.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        canonstore.nope  # noqa: B018


def test_open_dataset_and_open_loader_are_the_public_way_to_stream_a_store(tiny_store):
    import torch

    from canonstore import open_dataset, open_loader, open_store
    from canonstore.loaders import BatchLoader, StoreDataset

    store = open_store(tiny_store)
    by_path, by_store = open_dataset(tiny_store, "val", lead=2), open_dataset(store, "val", lead=2)
    assert isinstance(by_path, StoreDataset) and np.array_equal(by_path.times, by_store.times)
    loader = open_loader(store, "val", batch_size=4, lead=2, static=False, device="cpu", shuffle=False)
    assert isinstance(loader, BatchLoader) and loader.dataset.static_names == []
    x, y = next(iter(loader))[:2]
    first = [by_path[i] for i in range(4)]
    # the loader's x has no static fields: the dataset's first channels are the same inputs
    assert torch.equal(x, torch.stack([s[0][: x.shape[1]] for s in first]))
    assert torch.equal(y, torch.stack([s[1] for s in first]))
    assert not hasattr(store, "dataset") and not hasattr(store, "loader")  # formats never imports loaders
