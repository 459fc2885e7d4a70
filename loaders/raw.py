"""The "before" loader: the raw source files read sample by sample and normalised on the fly.

`RawSourceDataset` reads the store's own raw files (NetCDF, GRIB or NWB) through the sources' public
reading API (`preprocess.sources`), as most projects load today; it is the baseline `make bench`
compares against. It opens the store's own recipe (so it reads exactly the files, variables and time
range the store was built from) and normalises with the store's train statistics, so for the same split
and index it returns the same tensors as `StoreDataset` (to float32 rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from canonstore.errors import StoreError
from canonstore.formats import open_store
from canonstore.formats.spec import masked_channel, normalise
from canonstore.loaders.dataset import WindowDataset
from canonstore.preprocess.sources import load_recipe, open_sources, store_values


class RawSourceDataset(WindowDataset):
    """Windows read from the raw sources of a store; same arguments as StoreDataset.

    `recipe` defaults to the recipe file the store records (`attrs["recipe_path"]`); it must be the
    same recipe (sha256) the store was built from. Each process opens the files on first use.
    """

    _sources = None

    def __init__(self, store, split: str = "train", recipe: str | Path | None = None, **kwargs):
        store = open_store(store) if isinstance(store, (str, Path)) else store
        super().__init__(store, split, **kwargs)
        recipe = load_recipe(recipe or store.attrs["recipe_path"])
        if recipe.sha256 != store.attrs["recipe_sha256"]:
            raise StoreError(
                f"{store.path}: recipe {recipe.path} differs from the one the store was built from "
                f"(sha256 {recipe.sha256[:12]} != {store.attrs['recipe_sha256'][:12]})"
            )
        self.recipe = recipe
        self.mean, self.std = store.stats["mean"], store.stats["std"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_sources", None)  # open file handles do not cross processes
        return state

    @property
    def sources(self):
        if self._sources is None:
            self._sources = open_sources(self.recipe)
            raw = [c.name for c in self._sources.channels]
            valid = [masked_channel(c) for c in self.store_channels[len(raw) :]]
            if self.store_channels[: len(raw)] != raw or any(v not in raw for v in valid):
                raise StoreError(
                    f"{self.path}: the raw sources give channels {raw}, the store has {self.store_channels}"
                )
            self._valid_of = [raw.index(v) for v in valid]
        return self._sources

    def _read_steps(self, start: int, stop: int) -> np.ndarray:
        sources = self.sources  # opened on first use; sets _valid_of
        # The store's `_valid` channels, computed as the build does.
        values = store_values(sources, self._valid_of, start, stop, 0, len(self.store_channels))  # float64
        return normalise(values, self.mean, self.std).astype(self.store_dtype).astype(np.float32)
