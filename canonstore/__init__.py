"""canonstore: raw climate NetCDF -> one canonical, pre-normalised Zarr store, streamed to PyTorch.

from canonstore import open_store
s = open_store("data/intermediate/demo.zarr")
"""

from importlib import metadata as _metadata

from canonstore.formats import open_store

try:
    __version__ = _metadata.version("canonstore")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "open_store"]
