"""Where batches go and where they come from: the store (the batch path) or the raw source files.

Both yield the same (x, y) batches in the same order for the same run: `loader: netcdf` (the config's name
for the raw sources: NetCDF, GRIB or NWB) only changes where the values are read from, so the two can be
timed against each other.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from canonstore.errors import ConfigError
from canonstore.loaders.dataset import StoreDataset
from canonstore.loaders.downscale import CoarseUp, coarse_factor
from canonstore.loaders.prefetch import BatchLoader
from canonstore.loaders.raw import RawSourceDataset
from canonstore.loaders.sampler import BatchSampler, seeded_generator, worker_init_fn
from canonstore.training.config import lead_times


def pick_device(choice: str = "auto") -> torch.device:
    """cuda when asked for or (auto) when there is one, else cpu; under torchrun, this process's GPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda asked for, but torch sees no GPU (set device=cpu or device=auto)")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    # More processes than GPUs (e.g. NPROC=2 on one GPU, to test DDP) share them round-robin.
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


class RawLoader:
    """The raw-source baseline the way most projects load: per-sample reads in a standard DataLoader."""

    def __init__(
        self,
        dataset: RawSourceDataset,
        sampler: BatchSampler,
        device: torch.device,
        workers: int,
        seed: int,
        transform=None,
    ):
        self.dataset, self.sampler, self.device, self.transform = dataset, sampler, device, transform
        self.last_steps = None  # the store step t of each sample of the batch just yielded, as BatchLoader
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            worker_init_fn=worker_init_fn,
            generator=seeded_generator(seed),
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __iter__(self):
        # The DataLoader walks the same sampler in the same order: its batches are these positions. A pass
        # over the sampler moves it on to the next epoch, so it is set back for the DataLoader's own pass.
        epoch, start = self.sampler.epoch, self.sampler.start
        batches = list(self.sampler)
        self.sampler.set_epoch(epoch, start)
        for positions, (x, y) in zip(batches, self.loader):
            self.last_steps = self.dataset.times[np.asarray(positions, dtype=np.int64)]
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield (x, y) if self.transform is None else self.transform(x, y)


def make_loader(run: dict, store, split: str, device: torch.device, train: bool, rank: int = 0, world_size: int = 1):
    """Batches of `split` on `device`: this process's share, shuffled per epoch (and the last partial
    batch dropped) when `train`, else in order, with every sample scored by exactly one process.

    y carries the targets' `_valid` channels after the targets (see `metrics.TargetMasks`).
    """
    window = {key: run[key] for key in ("history", "channels", "targets", "static", "encodings")}
    window["lead"] = lead_times(run)
    try:
        dataset = (StoreDataset if run["loader"] == "store" else RawSourceDataset)(
            store, split, target_masks=True, **window
        )
    except ValueError as exc:  # e.g. a channel name the store does not have
        raise ConfigError(f"config for {store.path}: {exc}") from exc
    transform = None
    if run.get("task") == "downscaling":  # the model sees every dynamic input coarse-upped, never at full resolution
        try:
            factor = coarse_factor(dataset.sample_space, run["coarse"])
        except ValueError as exc:
            raise ConfigError(f"config for {store.path}: {exc}") from None
        transform = CoarseUp(factor, (dataset.history + 1) * dataset.channels.size, periodic=dataset.longitude_periodic)
    patches = run["blocks"] if train else None  # the config's `blocks`: validation and scores see whole fields
    if patches and run["loader"] != "store":
        raise ConfigError("blocks: random blocks are cut by the store's batch loader; use loader: store")
    if run["loader"] == "store":
        return BatchLoader(
            dataset,
            run["batch_size"],
            shuffle=train,
            seed=run["seed"],
            drop_last=train,
            device=device,
            workers=run["workers"],
            rank=rank,
            world_size=world_size,
            patch_size=None if patches is None else tuple(patches["size"]),
            patches_per_epoch=0 if patches is None else patches["per_epoch"],
            transform=transform,
        )
    sampler = BatchSampler(
        len(dataset),
        run["batch_size"],
        shuffle=train,
        seed=run["seed"],
        drop_last=train,
        rank=rank,
        world_size=world_size,
    )
    return RawLoader(dataset, sampler, device, run["workers"], run["seed"], transform)
