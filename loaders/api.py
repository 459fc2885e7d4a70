"""The two calls that stream a store to PyTorch: `open_dataset` (a torch Dataset) and `open_loader`
(prefetched batches on a device). Both are re-exported as `canonstore.open_dataset` / `open_loader`.

    from canonstore import open_dataset, open_loader
    train = open_dataset("data/intermediate/demo.zarr", "train", lead=1)
    loader = open_loader("data/intermediate/demo.zarr", "train", batch_size=32, device="cuda")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from canonstore.formats import Store
from canonstore.loaders.dataset import StoreDataset
from canonstore.loaders.prefetch import BatchLoader


def open_dataset(store: Store | str | Path, split: str = "train", **kwargs) -> StoreDataset:
    """A torch Dataset of forecast windows over `split` of `store` (a Store or its path).

    `kwargs` are StoreDataset's: lead, history, channels, targets, static, transform, target_masks, encodings.
    """
    return StoreDataset(store, split, **kwargs)


def open_loader(
    store: Store | str | Path,
    split: str = "train",
    batch_size: int = 32,
    *,
    lead: int | Sequence[int] = 1,
    history: int = 0,
    channels: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    static: bool | Sequence[str] = True,
    **kwargs,
) -> BatchLoader:
    """Batches of `split` of `store` prefetched onto `device`: the windows are chosen by the StoreDataset
    keywords (lead, history, channels, targets, static); `kwargs` go to BatchLoader (device, shuffle, seed,
    workers, patch_size, transform, ...)."""
    dataset = open_dataset(store, split, lead=lead, history=history, channels=channels, targets=targets, static=static)
    return BatchLoader(dataset, batch_size, **kwargs)
