"""`data`'s shard layout (formats/zarr_.py ShardLayout): its arithmetic against a step-by-step count."""

import pytest

from canonstore.formats.zarr_ import ShardLayout


@pytest.mark.parametrize("shard_steps", [1, 3, 4, 7, 12])
@pytest.mark.parametrize("steps", [1, 2, 11, 12, 13, 40])
def test_shards_partition_the_steps_in_order(steps, shard_steps):
    layout = ShardLayout(steps, shard_steps)
    owner = [t // shard_steps for t in range(steps)]  # by definition: shard k holds k*S .. (k+1)*S - 1
    assert layout.count == len(set(owner))
    for k in range(layout.count):
        first, stop = layout.range(k)
        assert list(range(first, stop)) == [t for t in range(steps) if owner[t] == k]
        assert layout.steps_in(k) == stop - first
    for t in range(steps):
        k, local = layout.locate(t)
        assert layout.shard_of(t) == k == owner[t] and layout.range(k)[0] + local == t
        assert list(layout.shards_from(t)) == sorted(set(owner[t:]))


def test_shard_size_fits_whole_samples_and_a_small_store_is_one_shard_of_its_steps():
    assert ShardLayout.of_size(1000, sample_bytes=300_000, shard_mb=1).shard_steps == 3  # 1 MiB / 300 kB
    assert ShardLayout.of_size(1000, sample_bytes=5 * 2**20, shard_mb=1).shard_steps == 1  # never 0
    small = ShardLayout.of_size(5, sample_bytes=100, shard_mb=64)
    assert (small.shard_steps, small.count, small.range(0)) == (5, 1, (0, 5))
