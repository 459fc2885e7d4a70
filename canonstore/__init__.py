"""canonstore: raw climate NetCDF -> one canonical, pre-normalised Zarr store, streamed to PyTorch.

    from canonstore import open_dataset, open_loader, open_store
    s = open_store("data/intermediate/demo.zarr")
    train = open_dataset(s, "train", lead=1)                                   # a torch Dataset
    loader = open_loader(s, "train", batch_size=32, device="cuda")             # batches on the GPU

The names load their modules on first use, so `import canonstore` and `import canonstore.errors`
stay light: xarray, zarr and torch load when a store is opened.
"""

from canonstore._lazy import lazy_names
from canonstore.provenance import package_version

__version__ = package_version("canonstore") or "0+unknown"  # "0+unknown": a source tree that is not installed

_API = {"open_store": "canonstore.formats", "open_dataset": "canonstore.loaders", "open_loader": "canonstore.loaders"}
__all__ = ["__version__", *_API]
__getattr__, __dir__ = lazy_names(__name__, _API)
