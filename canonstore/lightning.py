"""PyTorch Lightning: a LightningDataModule over a store's train, val and test splits, on the batch path.

    from canonstore.lightning import StoreDataModule
    data = StoreDataModule("data/intermediate/demo.zarr", batch_size=32, lead=1)
    lightning.Trainer(max_epochs=5).fit(model, datamodule=data)       # model.training_step gets (x, y)

Needs Lightning (`pip install 'canonstore[lightning]'`). Each split is an `open_loader` BatchLoader: batches
are gathered from the memory-mapped store and put on the trainer's device ahead of use. Under DDP each rank
reads its own share, with rank and world size taken from the trainer: train evenly (every rank the same number
of steps, the last partial batch dropped, as `make train` does), val and test every sample exactly once.
Lightning calls `sampler.set_epoch(epoch)` before each epoch, so epoch e visits the samples in the order of an
`open_loader` with the same seed after `set_epoch(e)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning

from canonstore.errors import StoreError
from canonstore.formats import Store
from canonstore.loaders import open_loader
from canonstore.loaders.prefetch import BatchLoader
from canonstore.splits.names import check_split


class StoreDataModule(lightning.LightningDataModule):
    """`train/val/test_dataloader()` over `store`'s splits. Window keywords as `open_loader`'s (lead, history,
    channels, targets, static); `patch_size` cuts random patches from training batches only; `device`
    overrides the trainer's (default: the trainer's root device, else cpu)."""

    def __init__(
        self,
        store: Store | str | Path,
        batch_size: int = 32,
        *,
        lead: int | Sequence[int] = 1,
        history: int = 0,
        channels: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
        static: bool | Sequence[str] = True,
        seed: int = 0,
        workers: int = 2,
        prefetch: int = 2,
        patch_size: tuple[int, int] | None = None,
        device=None,
    ):
        super().__init__()
        self.store, self.batch_size, self.seed, self.patch_size = store, batch_size, seed, patch_size
        self.batch_device = device
        self.window = {"lead": lead, "history": history, "channels": channels, "targets": targets, "static": static}
        self.threads = {"workers": workers, "prefetch": prefetch}

    def loader(self, split: str) -> BatchLoader:
        """The BatchLoader of `split` for this process: shuffled and even for train, in order for the others."""
        check_split(split)
        train = split == "train"
        trainer = self.trainer  # None outside a Trainer (then: one process, cpu unless `device` says)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        device = self.batch_device or (trainer.strategy.root_device if trainer is not None else "cpu")
        loader = open_loader(
            self.store,
            split,
            self.batch_size,
            **self.window,
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            device=device,
            patch_size=self.patch_size if train else None,
            **self.threads,
        )
        if train and len(loader) == 0:  # the partial batch is dropped: Lightning would train nothing, silently
            n = len(loader.dataset)
            raise StoreError(
                f"{loader.dataset.path}: the train split has {n} samples ({n // world} for each of {world} "
                f"process(es)), fewer than batch_size {self.batch_size}: no full batch, so no training step"
            )
        return loader

    def train_dataloader(self) -> BatchLoader:
        return self.loader("train")

    def val_dataloader(self) -> BatchLoader:
        return self.loader("val")

    def test_dataloader(self) -> BatchLoader:
        return self.loader("test")
