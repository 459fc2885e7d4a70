"""Seeded, epoch-aware, DDP-aware batches of sample positions.

Each epoch's order is a function of (seed, epoch) alone, so it is the same with any number of
workers and after a restart. Under DDP every rank takes its own slice of that permutation, so
ranks never see the same sample in an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (seed, epoch) pair, for every random draw of an epoch (order, blocks)."""
    return seed * 1_000_003 + epoch


def _default_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BatchSampler(torch.utils.data.Sampler):
    """Lists of positions in [0, n), one list per batch, sorted inside the batch for read locality.

    Usable as `DataLoader(dataset, batch_sampler=BatchSampler(...))` and by `BatchLoader`.
    Each rank gets `n // world_size` samples (the remainder is left out of the epoch, never
    repeated), so all ranks run the same number of steps and no sample is seen twice. Each pass
    over the sampler advances the epoch by one; `set_epoch(e)` sets the next pass's epoch, and
    `set_epoch(e, start=k)` makes that pass skip its first k batches (resuming mid-epoch).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        default_rank, default_world = _default_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of size {self.world_size}")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def positions(self) -> torch.Tensor:
        """This rank's positions for the current epoch, in visiting order."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.world_size
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __len__(self) -> int:
        per_rank = self.n // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.positions()
        skip, self.start = self.start, 0
        self.epoch += 1
        for start in range(skip * self.batch_size, len(mine), self.batch_size):
            batch = mine[start:start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield sorted(batch.tolist())
