"""BatchSampler: seeded epochs, sorted batches, disjoint DDP ranks."""

import json
from pathlib import Path

import pytest

from canonstore.loaders import BatchSampler
from tests.helpers import PROCESS_GROUPS


def _flat(sampler):
    return [i for batch in sampler for i in batch]


def test_same_seed_same_epochs_and_epochs_differ():
    a, b = BatchSampler(100, 8, seed=3), BatchSampler(100, 8, seed=3)
    first, second = _flat(a), _flat(a)
    assert first == _flat(b) and second == _flat(b)
    assert first != second and sorted(first) == sorted(second) == list(range(100))
    a.set_epoch(0)
    assert _flat(a) == first
    assert _flat(BatchSampler(100, 8, seed=4)) != first


def test_batches_are_sorted_and_sized():
    sampler = BatchSampler(50, 8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7 and [len(b) for b in batches] == [8] * 6 + [2]
    assert all(b == sorted(b) for b in batches)
    assert len(list(BatchSampler(50, 8, drop_last=True))) == len(BatchSampler(50, 8, drop_last=True)) == 6
    assert _flat(BatchSampler(10, 4, shuffle=False)) == list(range(10))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_ranks_are_disjoint_and_equal_in_length(world):
    ranks = [BatchSampler(103, 5, seed=1, rank=r, world_size=world) for r in range(world)]
    for r in ranks:
        r.set_epoch(2)
    seen = [_flat(r) for r in ranks]
    assert len({len(s) for s in seen}) == 1 and len(seen[0]) == 103 // world
    assert len(set().union(*map(set, seen))) == sum(map(len, seen))  # no sample on two ranks
    assert len({len(r) for r in ranks}) == 1  # same number of steps
    with pytest.raises(ValueError, match="rank 3 outside world of size 3"):
        BatchSampler(10, 2, rank=3, world_size=3)


def _rank_positions(rank, world, path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank, world_size=world)
    try:
        sampler = BatchSampler(101, 4, seed=5)  # rank and world come from the process group
        sampler.set_epoch(1)
        Path(path, f"rank{rank}.json").write_text(json.dumps([sampler.rank, sampler.world_size, _flat(sampler)]))
    finally:
        dist.destroy_process_group()


@PROCESS_GROUPS
def test_under_a_real_process_group_ranks_are_disjoint(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_positions, args=(2, str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s[:2] for s in seen] == [[0, 2], [1, 2]]
    assert not set(seen[0][2]) & set(seen[1][2]) and len(seen[0][2]) == len(seen[1][2]) == 50


@pytest.mark.parametrize("world", [2, 3])
def test_uneven_shares_score_every_sample_exactly_once(world):
    """Evaluation (in order, even=False): nothing is dropped, shares differ by at most one sample."""
    ranks = [BatchSampler(103, 5, shuffle=False, rank=r, world_size=world) for r in range(world)]
    assert not ranks[0].even
    seen = [_flat(r) for r in ranks]
    assert sorted(i for s in seen for i in s) == list(range(103))
    assert max(map(len, seen)) - min(map(len, seen)) <= 1
    assert [len(r) for r in ranks] == [-(-len(s) // 5) for s in seen]
    assert len(_flat(BatchSampler(103, 5, shuffle=True, even=False, rank=0, world_size=world))) == len(seen[0])


def test_random_streams_are_independent():
    from canonstore.loaders.sampler import epoch_seed

    seeds = {
        (seed, epoch, stream): epoch_seed(seed, epoch, stream)
        for seed in range(3)
        for epoch in (0, 1, 1_000_003)
        for stream in ("order", "patches", "model")
    }
    assert len(set(seeds.values())) == len(seeds)  # no two (seed, epoch, stream) share a generator state
    with pytest.raises(ValueError, match="unknown random stream"):
        epoch_seed(0, 0, "noise")


def test_the_patches_stream_draws_what_the_blocks_stream_drew():
    """Renamed from "blocks" in 0.1: a run resumed or repeated after the rename cuts the same patches."""
    from canonstore.loaders.sampler import epoch_seed

    assert epoch_seed(0, 0, "patches") == 4324601099084218337  # epoch_seed(0, 0, "blocks") before the rename
    assert epoch_seed(7, 3, "patches") == 6665335680343557524
