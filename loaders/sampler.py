"""Seeded, epoch-aware, DDP-aware batches of sample positions, and the seeds of a DataLoader's workers.

Each epoch's order is a function of (seed, epoch) alone, so it is the same with any number of
workers and after a restart. Under DDP every rank takes its own slice of that permutation, so
ranks never see the same sample in an epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch

# Independent random streams of one epoch; a stream's seed follows its position, so names may change, never order.
STREAMS = ("order", "patches", "model")


def epoch_seed(seed: int, epoch: int, stream: str = "order") -> int:
    """The seed of one random stream (`STREAMS`) of epoch `epoch` of a run seeded `seed`.

    Streams are drawn through numpy's SeedSequence, so the sample order, the random patches and the
    model's own randomness never share a generator state (the same seed for two of them makes their
    draws correlated), and no two (seed, epoch) pairs share one either.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; expected one of {list(STREAMS)}")
    entropy = [int(seed) % 2**63, int(epoch), STREAMS.index(stream)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _default_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BatchSampler(torch.utils.data.Sampler):
    """Lists of positions in [0, n), one list per batch, sorted inside the batch for read locality.

    Usable as `DataLoader(dataset, batch_sampler=BatchSampler(...))` and by `BatchLoader`.
    Under DDP, `even=True` (the default when shuffling, i.e. training) gives each rank `n // world_size`
    samples: the remainder is left out of the epoch, never repeated, so all ranks run the same number
    of steps, as DistributedDataParallel needs. `even=False` (the default in order, i.e. evaluation)
    drops nothing: ranks get contiguous shares whose sizes differ by at most one, so every sample is
    seen exactly once across ranks (reduce the results across ranks). Each pass over the sampler
    advances the epoch by one; `set_epoch(e)` sets the next pass's epoch, and `set_epoch(e, start=k)`
    makes that pass skip its first k batches (resuming mid-epoch).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        even: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        default_rank, default_world = _default_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of size {self.world_size}")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.even = shuffle if even is None else even
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def positions(self) -> torch.Tensor:
        """This rank's positions for the current epoch, in visiting order."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(epoch_seed(self.seed, self.epoch, "order"))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        return order[self._share(self.rank) : self._share(self.rank + 1)]

    def _share(self, rank: int) -> int:
        """Where rank `rank`'s share of the epoch's order starts."""
        if self.even:
            return rank * (self.n // self.world_size)
        base, extra = divmod(self.n, self.world_size)  # the first `extra` ranks get one more
        return rank * base + min(rank, extra)

    def __len__(self) -> int:
        mine = self._share(self.rank + 1) - self._share(self.rank)
        return mine // self.batch_size if self.drop_last else -(-mine // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.positions()
        skip, self.start = self.start, 0
        self.epoch += 1
        for start in range(skip * self.batch_size, len(mine), self.batch_size):
            batch = mine[start : start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield sorted(batch.tolist())


def worker_init_fn(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from torch's per-worker seed (base seed + id).

    With a seeded DataLoader `generator`, any randomness in a worker is then reproducible for any
    number of workers; torch itself is already seeded by the DataLoader.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU torch.Generator for DataLoader(generator=...) and samplers."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g
