"""Open a canonical store: `open_store(path)` is the one entry point other projects use.

>>> s = open_store("data/intermediate/demo.zarr")
>>> s.array[s.split_indices("train")[:4]].shape      # memory-mapped, no decode
(4, 14, 32, 64)
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from canonstore._warnings import cftime_notes_silenced, chunk_notes_silenced
from canonstore.errors import StoreError, first_line
from canonstore.formats.coords import find_axis, longitude_is_periodic
from canonstore.formats.handle import CheckedStore, StoreHandle
from canonstore.formats.manifest import MANIFEST
from canonstore.formats.physical import as_netcdf_ready, physical_view
from canonstore.formats.shards import ShardedArray
from canonstore.formats.spec import READABLE_VERSIONS, denormalise
from canonstore.formats.zarr_ import ShardLayout, map_shard, mappable_layout
from canonstore.remote import URL, is_url
from canonstore.splits import SPLIT_CODES, check_split, find_gaps


class Store:
    """A read-only view of one canonstore store. Cheap to create; nothing is read until asked.

    Everything it reads comes from the store it opened, or raises once a rebuild has replaced that
    store (`formats.handle`): a Store never returns one build's data beside another's statistics.
    """

    remote = False  # a store on object storage (`s3://`): read in place, except `.array` (pull it first)

    def __init__(self, path: str | Path):
        if is_url(path):  # FORMAT.md, "On object storage": checked against the manifest it opened
            from canonstore.formats.remote_store import open_remote

            self.path, self.remote = URL(path), True
            self._zarr, self._manifest = open_remote(self.path)
        else:
            self.path = Path(path)
            self._handle = StoreHandle(self.path)
            if not (self.path / "zarr.json").is_file():
                raise StoreError(f"{self.path}: not a Zarr v3 store (no zarr.json)")
            self._zarr = CheckedStore(self._handle)
        try:
            self._group = zarr.open_group(store=self._zarr, mode="r")
        except StoreError:
            raise
        except Exception as exc:  # damaged metadata JSON fails inside zarr with many types
            if self.remote:
                raise StoreError(f"{self.path}: the store's metadata cannot be read: {first_line(exc)}") from None
            raise damaged_metadata(self.path, exc) from exc
        info = self._group.attrs.get("canonstore")
        if not isinstance(info, dict) or "format_version" not in info:
            raise StoreError(f"{self.path}: a Zarr store, but not a canonstore store (no 'canonstore' attrs)")
        if info["format_version"] not in READABLE_VERSIONS:
            raise StoreError(
                f"{self.path}: format version {info['format_version']}, "
                f"this canonstore reads versions {list(READABLE_VERSIONS)}; rebuild the store"
            )
        self.attrs: dict = info

    def __repr__(self) -> str:
        return f"<canonstore.Store {self.path} data{tuple(self.shape)} {self.dtype}>"

    # -- the data ----------------------------------------------------------------------
    @cached_property
    def array(self):
        """`data` as a (time, channel, *space) array memory-mapped from its shard files.

        One shard: an np.memmap. Several: a `ShardedArray`, which indexes the same way and maps
        shards lazily. Indexing copies nothing until you ask (`array[i]` is a view). A compressed
        store cannot be mapped: you get the zarr array instead, which decodes on each read.
        """
        if self.remote:
            from canonstore.formats.remote_store import pull_first

            raise StoreError(pull_first(self.path, "Store.array"))
        data = self._group["data"]
        if self.attrs["layout"]["compression"] != "none":
            return data
        try:
            shard_steps = mappable_layout(self.path, data)
            if ShardLayout(self.shape[0], shard_steps).count == 1:
                return map_shard(self._handle, self.shape, self.dtype, shard_steps, 0)
            array = ShardedArray(self._handle, self.shape, self.dtype, shard_steps)
            array.shard(0)  # a damaged first shard fails here, not in the middle of an epoch
            return array
        except (ValueError, OSError) as exc:
            raise StoreError(
                f"{self.path}: cannot memory-map `data`: {exc}; run `canonstore verify {self.path}`"
            ) from exc

    @cached_property
    def build_id(self) -> str:
        """The build this Store opened: its manifest's sha256, as `manifest.store_identity(path)` gives it
        while the store is not rebuilt (read through the handle, so never the next build's)."""
        return hashlib.sha256(self._manifest if self.remote else self._handle.read(MANIFEST)).hexdigest()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._group["data"].shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._group["data"].dtype)

    @cached_property
    def _ds(self) -> xr.Dataset:
        with cftime_notes_silenced():  # 360_day / far-future times decode to cftime, as they should
            return xr.open_zarr(self._zarr, consolidated=True, chunks=None)

    @cached_property
    def channels(self) -> list[str]:
        return [str(c) for c in self._ds["channel"].values]

    @cached_property
    def time(self) -> np.ndarray:
        """Decoded time coordinate: datetime64, cftime objects (noleap, 360_day), or positions."""
        return self._ds["time"].values

    @cached_property
    def dims(self) -> tuple[str, ...]:
        return tuple(self._ds["data"].dims)

    @cached_property
    def stats(self) -> dict[str, np.ndarray]:
        """Train-split statistics per channel in float64 (mean, std, min, max, count, nan_count, sum, sum_sq)."""
        return {
            name.removeprefix("stats_"): self._ds[name].values
            for name in self._ds.data_vars
            if name.startswith("stats_")
        }

    @cached_property
    def splits(self) -> np.ndarray:
        """Split label per time step: int8 codes of splits.SPLIT_NAMES ("train", "val", "test", "excluded")."""
        return self._ds["split"].values

    @cached_property
    def sessions(self) -> list[str]:
        """Session ids in time order (NWB stores), else []."""
        return list(self._ds["session"].attrs["session_ids"]) if "session" in self._ds else []

    @cached_property
    def session(self) -> np.ndarray | None:
        """Each step's position in `sessions`, or None for a store without sessions."""
        return self._ds["session"].values if "session" in self._ds else None

    @cached_property
    def gaps(self) -> np.ndarray:
        """Steps after which the time axis jumps (recipe `time_gaps: allow`): windows never span them.

        Those the build recorded (`gap_after`: with each session's end) and, on an axis without sessions,
        those `find_gaps` measures now: a store built before the rule counted a shifted clock (18:00 then
        02:00 on a 6-hourly axis) as a gap recorded none there."""
        found = find_gaps(self.time)[0] if self.session is None or "gap_after" not in self.attrs else []
        return np.union1d(np.asarray(self.attrs.get("gap_after", []), dtype=np.int64), found).astype(np.int64)

    @cached_property
    def latitude(self) -> str | None:
        """Name of the latitude coordinate (CF rules, decided at build time), or None."""
        return self.attrs["latitude"] if "latitude" in self.attrs else find_axis(self._ds.coords, "latitude")

    @cached_property
    def longitude(self) -> str | None:
        """Name of the longitude coordinate, or None."""
        return self.attrs["longitude"] if "longitude" in self.attrs else find_axis(self._ds.coords, "longitude")

    @cached_property
    def longitude_periodic(self) -> bool:
        """Whether the grid wraps around in longitude (global and regular, FORMAT.md): only then do coarse-ups,
        convolutions and random blocks wrap from the last column to the first; else they repeat the edge."""
        if "longitude_periodic" in self.attrs:
            return bool(self.attrs["longitude_periodic"])
        name = self.longitude  # a store built before it was recorded: from the longitude's values
        return name is not None and longitude_is_periodic(self._ds[name], self.dims[2:])

    def split_indices(self, name: str) -> np.ndarray:
        """Time indices labelled `name` (one of splits.SPLITS: "train", "val", "test"), ascending."""
        check_split(name)
        return np.flatnonzero(self.splits == SPLIT_CODES[name])

    @cached_property
    def static(self) -> dict[str, np.ndarray]:
        """Normalised static fields (e.g. lsm, orography) by name; empty if the recipe has none."""
        if "static" not in self._ds:
            return {}
        return {str(n): self._ds["static"].sel(static_channel=n).values for n in self._ds["static_channel"].values}

    @cached_property
    def mask(self) -> np.ndarray | None:
        """(channel, *space) validity mask (1 = observed) when NaNs were filled, else None."""
        return self._ds["mask"].values.astype(bool) if "mask" in self._ds else None

    def denormalise(self, values: np.ndarray, channel_axis: int = 1) -> np.ndarray:
        """Back to physical units: values * scale + mean, channels along `channel_axis`."""
        return denormalise(values, self.stats["mean"], self.stats["std"], channel_axis)

    def to_xarray(self, physical: bool = False, chunks: dict | None = None) -> xr.Dataset:
        """The whole store as a lazy (dask) xarray Dataset: what `xr.open_zarr` gives, with the two nested JSON
        attributes as text so that `to_netcdf` works (`formats.physical`); its reads come from this store or raise
        once it has been rebuilt. `physical`: one variable per channel in physical units, with the sources'
        units, long_name, standard_name and global attributes. `chunks`: dask chunks, as `xr.open_zarr`'s."""
        with cftime_notes_silenced(), chunk_notes_silenced():
            ds = as_netcdf_ready(xr.open_zarr(self._zarr, consolidated=True, **({"chunks": chunks} if chunks else {})))
        return physical_view(ds, self.stats["mean"], self.stats["std"]) if physical else ds


def damaged_metadata(path: Path, exc: Exception) -> StoreError:
    """One line naming the metadata file that cannot be read (zarr fails on bad JSON with long tracebacks)."""
    for rel in ("zarr.json", "data/zarr.json"):
        try:
            json.loads((path / rel).read_text())
        except ValueError as bad:
            return StoreError(
                f"{path / rel}: the store's metadata is damaged (not valid JSON: {bad}); "
                f"`canonstore verify {path}` lists the damage; rebuild the store "
                f"(`canonstore build RECIPE --out {path} --force`)"
            )
        except OSError:
            continue
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return StoreError(
        f"{path}: the store's metadata cannot be read ({type(exc).__name__}: {first}); "
        f"`canonstore verify {path}` lists the damage; rebuild the store "
        f"(`canonstore build RECIPE --out {path} --force`)"
    )


def open_store(path: str | Path) -> Store:
    """Open the canonstore store at `path` (a `<name>.zarr` directory, or an `s3://` URL) for reading."""
    if is_url(path):
        return Store(path)
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    if not (path / MANIFEST).is_file():
        raise StoreError(f"{path}: no {MANIFEST}: the store is incomplete or was not made by canonstore")
    return Store(path)
