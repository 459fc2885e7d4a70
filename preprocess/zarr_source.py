"""Zarr sources (v2 and v3), a local folder or an `s3://` URL, opened lazily by xarray: a source kind like NetCDF.

WeatherBench 2's and ARCO-ERA5's layout reads as it is: long variable names (`2m_temperature`, channels `t2m`
by `canonstore.names`), `level` in hPa, latitude ascending, dimensions in any order, 6-hourly time. Nothing is
read at open beyond metadata and coordinates; `Sources.read` reads a block of steps through dask arrays on the
source's chunks, which fetch only the chunks the block's steps and the recipe's levels touch. Every chunk fetched
goes through `_Chunks`, which counts the bytes (`READS`, for tests and `bench/remote.py`) and keeps the last
few chunks, so that a chunk shared by two consecutive blocks of the build is fetched once.

    open_parts(Path("era5.zarr"), recipe)       # -> [<xarray.Dataset> lazy, as xr.open_zarr gives it]
    open_parts(URL("s3://bucket/wb2/era5.zarr"), recipe)
"""

from __future__ import annotations

import json
import sys
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import xarray as xr
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import LocalStore, ObjectStore, WrapperStore

from canonstore.errors import SourceError
from canonstore.preprocess.registry import first_line, register
from canonstore.remote import METADATA, URL, is_url, is_zarr_dir, remote_error, s3_store

SUFFIXES = (".zarr",)
CACHE_BYTES = 256 * 2**20  # the chunks kept after their block: a block boundary inside a chunk reads it once


@dataclass
class Reads:
    """What this process fetched from Zarr sources: bytes and requests in all, and requests per object."""

    bytes: int = 0
    requests: int = 0
    per_key: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, key: str, nbytes: int) -> None:
        with self.lock:
            self.bytes += nbytes
            self.requests += 1
            self.per_key[key] = self.per_key.get(key, 0) + 1

    def reset(self) -> None:
        with self.lock:
            self.bytes, self.requests, self.per_key = 0, 0, {}


READS = Reads()


def recognises(path, head: bytes) -> bool:
    """An `s3://` URL (recipe.py lets through only URLs that can be Zarr) or a folder with Zarr metadata."""
    return is_url(path) or is_zarr_dir(path)


def open_parts(path, recipe) -> list[xr.Dataset]:
    """The store as one lazy Dataset (all its variables, as NetCDF gives a file's)."""
    store = _Chunks(_store_at(path), path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*onsolidated metadata.*")
            warnings.filterwarnings("ignore", category=xr.SerializationWarning)
            ds = xr.open_zarr(
                store,
                # dask arrays on the source's own chunks: a block's read fetches the chunks it touches, nothing else,
                # in parallel threads; and the grid's transposition to the store's order is dask's, not a lazy
                # vectorised index (xarray's lazy arrays, chunks=None, built coordinate lists: 5x slower)
                chunks={},
                consolidated=None,  # consolidated metadata when the store has it (one request), else listed
                decode_coords="all",
                decode_times=xr.coders.CFDatetimeCoder(time_unit="s"),  # as NetCDF: seconds, beyond 2262 too
            )
    except SourceError:
        raise
    except Exception as exc:
        if is_url(path):
            raise SourceError(remote_error(path, exc)) from None
        raise SourceError(f"{path}: cannot open as a Zarr store: {first_line(exc)}") from exc
    ds.set_close(store.close)
    return [ds]


def _store_at(path):
    """A read-only zarr store at a local folder or an `s3://` URL (probed: a missing bucket, wrong credentials
    or an empty prefix is one line here, not a 'group not found' from zarr)."""
    if not is_url(path):
        return LocalStore(Path(path), read_only=True)
    import obstore

    s3 = s3_store(URL(path))
    try:
        first = next(iter(obstore.list(s3, chunk_size=64)), [])
    except Exception as exc:
        raise SourceError(remote_error(path, exc)) from None
    if not any(o["path"].rsplit("/", 1)[-1] in METADATA for o in first):
        try:  # a store with many objects listed before its root metadata
            obstore.head(s3, "zarr.json")
        except Exception:
            try:
                obstore.head(s3, ".zgroup")
            except Exception:
                raise SourceError(f"{path}: no Zarr store there (no zarr.json or .zgroup under that prefix)") from None
    return ObjectStore(s3_store(URL(path), patient=True), read_only=True)  # probed: now the chunk reads, retried


class _Chunks(WrapperStore):
    """Counts what is fetched (`READS`) and keeps the last chunks fetched, up to `CACHE_BYTES`."""

    def __init__(self, store, where="") -> None:
        super().__init__(store)
        self._where = where
        self._kept: OrderedDict[str, object] = OrderedDict()
        self._kept_bytes = 0
        self._lock = threading.Lock()
        self._nan_fill: dict[str, bool] = {}

    async def get(self, key, prototype, byte_range=None):
        cacheable = byte_range is None and key.rsplit("/", 1)[-1] not in METADATA
        if cacheable:
            with self._lock:
                if key in self._kept:
                    self._kept.move_to_end(key)
                    return self._kept[key]
        buf = await self._store.get(key, prototype, byte_range)
        if buf is None:
            if key.rsplit("/", 1)[-1] in METADATA or await self._fills_with_nan(key):
                return None  # zarr probes for the metadata documents of both formats; NaN fill: see below
            raise self._missing(key)
        READS.add(key, len(buf))
        if cacheable and len(buf) <= CACHE_BYTES:
            with self._lock:
                self._kept[key] = buf
                self._kept_bytes += len(buf)
                while self._kept_bytes > CACHE_BYTES:
                    _, old = self._kept.popitem(last=False)
                    self._kept_bytes -= len(old)
        return buf

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        found = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), buf in zip(key_ranges, found):
            if buf is None:
                if await self._fills_with_nan(key):
                    continue
                raise self._missing(key)
            READS.add(key, len(buf))
        return found

    async def _fills_with_nan(self, key: str) -> bool:
        """Whether the array of chunk `key` has NaN as its fill value: zarr leaves out a chunk equal to the fill
        value (`write_empty_chunks=False`, its default), and one left out of a NaN-filled array (ocean fields
        over land) reads as NaN, which the recipe's NaN checks then see as NaN. A numeric fill value (0.0, zarr's
        default for floats) would read as data: such a chunk is refused (`_missing`)."""
        array = key.split("/c/", 1)[0] if "/c/" in key else key.rsplit("/", 1)[0]
        if array not in self._nan_fill:
            fill = None
            for name in ("zarr.json", ".zarray"):  # v3, v2
                doc = await self._store.get(f"{array}/{name}", default_buffer_prototype())
                if doc is not None:
                    fill = json.loads(doc.to_bytes()).get("fill_value")
                    break
            self._nan_fill[array] = fill == "NaN"
        return self._nan_fill[array]

    def _missing(self, key: str) -> SourceError:
        """A chunk the read needs is not in the store: zarr would give the array's fill value (0.0 by default
        for floats, not NaN) as if it were data."""
        return SourceError(
            f"{self._where}: variable {key.split('/', 1)[0]}: chunk {key} is missing (Zarr would read it as the "
            "array's fill value, a number, as if it were data); restore the chunk, or, if its writer skips chunks "
            "equal to the fill value (zarr's default, write_empty_chunks=False), rewrite the source with "
            "write_empty_chunks=True or a NaN fill value"
        )

    def close(self) -> None:
        with self._lock:
            self._kept.clear()
            self._kept_bytes = 0
        super().close()


register("zarr", sys.modules[__name__])
