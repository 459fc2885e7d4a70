"""`canonstore verify`: recompute the checksums recorded at build time and check the schema."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from canonstore.errors import CanonstoreError, StoreError
from canonstore.formats.handle import StoreHandle
from canonstore.formats.manifest import check_manifest, file_sha256
from canonstore.formats.spec import STAT_NAMES
from canonstore.formats.store import Store
from canonstore.formats.zarr_ import ShardLayout, map_shard, mappable_layout
from canonstore.remote import is_url, zarr_identity
from canonstore.splits import SPLIT_NAMES


def verify_store(path: str | Path, checksums: bool = True, progress: bool = False) -> list[str]:
    """Every problem found in the store at `path`; an empty list means it is intact.

    `checksums=False` skips re-hashing the files (the build just hashed them for the manifest). A store
    rebuilt while it is verified gives that one problem, not the mix of two builds' files. An `s3://` store's
    objects are listed and (`checksums`) streamed and hashed (`formats.remote_store`).
    """
    if is_url(path):
        return _verify_remote(path, checksums, progress)
    path = Path(path)
    try:
        pinned = StoreHandle(path)
    except StoreError as exc:
        return [str(exc)]
    problems = check_manifest(path, checksums, progress)
    try:
        store = Store(path)
    except StoreError as exc:
        problems.append(str(exc))
    except Exception as exc:  # damaged metadata JSON fails inside zarr with many types
        problems.append(f"{path}: cannot open: {type(exc).__name__}: {exc}")
    else:
        problems += _check_schema(store)
    try:
        pinned.check()
    except StoreError:
        return [f"{path} was rebuilt or replaced while it was being verified; verify it again"]
    return problems


def _verify_remote(url: str, checksums: bool, progress: bool) -> list[str]:
    from canonstore.formats.remote_store import remote_problems

    try:
        problems = remote_problems(url, checksums, progress)
    except StoreError as exc:  # no such bucket, access denied: one line
        return [str(exc)]
    try:
        store = Store(url)
    except StoreError as exc:
        return problems or [str(exc)]  # a store that does not open: the objects' problems say why
    return problems + _check_schema(store)


def verify_inputs(path: str | Path, threads: int = 8) -> list[str]:
    """Raw inputs that are missing or changed since the store was built (size, then sha256, hashed in parallel)."""
    try:
        inputs = Store(path).attrs["inputs"]
    except Exception as exc:
        return [f"{path}: cannot read the recorded inputs: {exc}"]

    def check(item: dict) -> str | None:
        if "objects" in item:  # a Zarr source, local or on object storage: its metadata and listing
            try:
                now = zarr_identity(item["path"])
            except (CanonstoreError, OSError) as exc:
                return f"input {item['path']}: cannot be read now: {exc}"
            if now["sha256"] != item["sha256"]:
                return (
                    f"input {item['path']}: changed since the build (metadata or chunk listing, sizes or stamps: "
                    f"{item['objects']} -> {now['objects']} objects, {item['size']} -> {now['size']} bytes); "
                    "rebuild the store"
                )
            return None
        source = Path(item["path"])
        if not source.is_file():
            return f"input {source}: missing (the store was built from it)"
        if source.stat().st_size != item["size"]:
            return (
                f"input {source}: changed since the build (size {item['size']} -> {source.stat().st_size} "
                "bytes); rebuild the store"
            )
        digest = file_sha256(source)
        if digest != item["sha256"]:
            return (
                f"input {source}: changed since the build (sha256 {item['sha256'][:12]}... -> {digest[:12]}...); "
                "rebuild the store"
            )
        return None

    with ThreadPoolExecutor(threads) as pool:  # hashlib releases the GIL: reads and hashes overlap
        return [p for p in pool.map(check, inputs) if p]


def _check_schema(store: Store) -> list[str]:
    problems = []
    try:
        ds = store._ds
        shape = store.shape
        ntime, nchan = shape[0], shape[1]
        if ds["data"].dims[:2] != ("time", "channel"):
            problems.append(f"data: dims {ds['data'].dims}, expected ('time', 'channel', ...)")
        if ds["time"].size != ntime or ds["channel"].size != nchan:
            problems.append(
                f"data: shape {shape} does not match time ({ds['time'].size}) "
                f"and channel ({ds['channel'].size}) coordinates"
            )
        for name in STAT_NAMES:
            if f"stats_{name}" not in ds or ds[f"stats_{name}"].shape != (nchan,):
                problems.append(f"stats_{name}: missing or not one value per channel")
        split = ds["split"].values
        if split.shape != (ntime,) or not np.isin(split, np.arange(len(SPLIT_NAMES))).all():
            problems.append(f"split: expected {ntime} codes in 0..{len(SPLIT_NAMES) - 1}")
        if "session" in ds:  # optional (FORMAT.md): one position in `session_ids` per step
            ids = ds["session"].attrs.get("session_ids")
            codes = ds["session"].values
            if not isinstance(ids, list) or codes.shape != (ntime,) or not np.isin(codes, np.arange(len(ids))).all():
                problems.append(f"session: expected {ntime} positions in the session_ids list")
        if store.attrs["layout"]["compression"] == "none" and not store.remote:  # every shard index (remote: hashed)
            shard_steps = mappable_layout(store.path, store._group["data"])
            for k in range(ShardLayout(ntime, shard_steps).count):
                map_shard(store._handle, shape, store.dtype, shard_steps, k)
    except Exception as exc:  # a damaged chunk fails in whichever codec reads it first
        problems.append(f"schema: {type(exc).__name__}: {exc}")
    return problems
