"""Library warnings that carry no news for a canonstore user, silenced where they arise and nowhere else.

with zarr_notes_silenced():
    zarr.consolidate_metadata(staging)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def zarr_notes_silenced() -> Iterator[None]:
    """zarr-python's notes on what canonstore does on purpose when it writes a Zarr store: consolidated
    metadata in a v3 store (readers open it in one read; zarr-python supports it though the v3 spec does not
    say it yet), and canonstore's own files beside the arrays (staging marker, progress, manifest), which are
    not Zarr nodes. Everything else zarr says still reaches the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        yield


@contextmanager
def cftime_notes_silenced() -> Iterator[None]:
    """xarray's note that a 360_day, noleap or far-future time axis decodes to cftime dates: that is what such
    a calendar needs (canonstore reads every calendar), not news, and it came once per opening."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Unable to decode time axis.*")
        yield


@contextmanager
def chunk_notes_silenced() -> Iterator[None]:
    """xarray's note that dask chunks of a shard's steps split the small 1-D arrays (`split`, `time`) that are
    stored in one chunk: reading those whole is cheap, and `data`'s chunks are aligned with its shards."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*The specified chunks separate the stored chunks.*")
        yield
