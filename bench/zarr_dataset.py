"""The zarr-python row of bench/loader.py: StoreDataset's samples, each read through zarr-python."""

import numpy as np

from canonstore.loaders import StoreDataset


class ZarrDataset(StoreDataset):
    """StoreDataset's samples, each read through zarr-python (what a plain-zarr user writes)."""

    _zarr = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_zarr", None)
        return state

    def _read_steps(self, start: int, stop: int) -> np.ndarray:
        if self._zarr is None:
            import zarr

            self._zarr = zarr.open_array(self.path / "data", mode="r")
        return self._zarr[start:stop]
