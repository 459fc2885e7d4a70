"""BatchSampler: seeded epochs, sorted batches, disjoint DDP ranks."""

import pytest

from canonstore.loaders import BatchSampler


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
    assert len(set().union(*map(set, seen))) == sum(map(len, seen))        # no sample on two ranks
    assert len({len(r) for r in ranks}) == 1                                # same number of steps
    with pytest.raises(ValueError, match="rank 3 outside world of size 3"):
        BatchSampler(10, 2, rank=3, world_size=3)
