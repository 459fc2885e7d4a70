"""`canonstore verify`: recompute the checksums recorded at build time and check the schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from canonstore.formats.manifest import check_manifest
from canonstore.formats.store import STAT_NAMES, Store
from canonstore.formats.zarr_ import memmap_data
from canonstore.splits import SPLIT_NAMES

def verify_store(path: str | Path, checksums: bool = True) -> list[str]:
    """Every problem found in the store at `path`; an empty list means it is intact.

    `checksums=False` skips re-hashing the files (the build just hashed them for the manifest).
    """
    path = Path(path)
    problems = check_manifest(path, checksums)
    try:
        store = Store(path)
    except Exception as exc:  # damaged metadata JSON fails inside zarr with many types
        return problems + [f"{path}: cannot open: {type(exc).__name__}: {exc}"]
    problems += _check_schema(store)
    return problems


def _check_schema(store: Store) -> list[str]:
    problems = []
    try:
        ds = store._ds
        shape = store.shape
        ntime, nchan = shape[0], shape[1]
        if ds["data"].dims[:2] != ("time", "channel"):
            problems.append(f"data: dims {ds['data'].dims}, expected ('time', 'channel', ...)")
        if ds["time"].size != ntime or ds["channel"].size != nchan:
            problems.append(f"data: shape {shape} does not match time ({ds['time'].size}) "
                            f"and channel ({ds['channel'].size}) coordinates")
        for name in STAT_NAMES:
            if f"stats_{name}" not in ds or ds[f"stats_{name}"].shape != (nchan,):
                problems.append(f"stats_{name}: missing or not one value per channel")
        split = ds["split"].values
        if split.shape != (ntime,) or not np.isin(split, np.arange(len(SPLIT_NAMES))).all():
            problems.append(f"split: expected {ntime} codes in 0..{len(SPLIT_NAMES) - 1}")
        if store.attrs["layout"]["compression"] == "none":
            memmap_data(store.path, store._group["data"])
    except Exception as exc:  # a damaged chunk fails in whichever codec reads it first
        problems.append(f"schema: {type(exc).__name__}: {exc}")
    return problems
