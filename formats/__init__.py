"""The canonical store: its schema (FORMAT.md), Zarr v3 layout, reader and checks."""

from canonstore.formats.spec import FORMAT_VERSION
from canonstore.formats.store import Store, open_store
from canonstore.formats.verify import verify_store

__all__ = ["FORMAT_VERSION", "Store", "open_store", "verify_store"]
