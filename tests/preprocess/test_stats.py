import numpy as np

from canonstore.preprocess.stats import RunningStats, step_moments


def test_blockwise_stats_equal_numpy_in_float64_with_nans():
    rng = np.random.default_rng(1)
    data = rng.normal(5e4, 300, size=(50, 3, 4, 5))  # geopotential-like: large mean, small spread
    data[3, 1, 2, 2] = np.nan
    data[7:9, 2] = np.nan
    stats = RunningStats(3)
    for start in range(0, 50, 7):
        stats.update(data[start : start + 7])
    per_channel = np.moveaxis(data, 1, 0).reshape(3, -1)
    result = stats.as_dict()
    np.testing.assert_allclose(result["mean"], np.nanmean(per_channel, axis=1), rtol=1e-13)
    np.testing.assert_allclose(result["std"], np.nanstd(per_channel, axis=1), rtol=1e-9)
    np.testing.assert_array_equal(result["min"], np.nanmin(per_channel, axis=1))
    np.testing.assert_array_equal(result["max"], np.nanmax(per_channel, axis=1))
    assert result["nan_count"].tolist() == [0, 1, 2 * 20]
    assert result["count"].tolist() == [1000, 999, 960]
    np.testing.assert_allclose(result["sum"], np.nansum(per_channel, axis=1), rtol=1e-12)
    np.testing.assert_allclose(result["sum_sq"], np.nansum(per_channel**2, axis=1), rtol=1e-12)


def test_a_channel_without_values_has_nan_stats():
    stats = RunningStats(2)
    block = np.ones((4, 2, 3))
    block[:, 1] = np.nan
    stats.update(block)
    result = stats.as_dict()
    assert result["mean"][0] == 1 and np.isnan(result["mean"][1]) and np.isnan(result["std"][1])


def test_step_moments_of_a_field_do_not_depend_on_its_block_or_dtype():
    """What makes a distributed build bit-identical: a field's moments are its own, however it is cut."""
    rng = np.random.default_rng(2)
    block = rng.normal(5e4, 300, size=(9, 4, 30, 50)).astype(np.float32)
    block[2, 1, 3, :7] = np.nan
    whole = step_moments(block)
    parts = np.concatenate(
        [
            np.concatenate([step_moments(block[a : a + 2, 0:3]), step_moments(block[a : a + 2, 3:4])], axis=2)
            for a in range(0, 9, 2)
        ],
        axis=1,
    )
    assert whole.tobytes() == parts.tobytes()
    assert whole.tobytes() == step_moments(block.astype(np.float64)).tobytes()
    assert whole[0, 2, 1] == 30 * 50 - 7 and whole[0, 2, 0] == 30 * 50


def test_merging_moments_step_by_step_equals_update_in_any_grouping():
    rng = np.random.default_rng(3)
    data = rng.normal(280, 20, size=(40, 3, 6, 7))
    one = RunningStats(3)
    one.update(data)
    merged = RunningStats(3)
    for start in (0, 13, 29):  # shards of uneven length, merged in order
        merged.merge(step_moments(data[start : {0: 13, 13: 29, 29: 40}[start]]), 42)
    assert all(np.array_equal(a, b) for a, b in zip(one.as_dict().values(), merged.as_dict().values()))


def test_step_moments_take_the_extremes_a_caller_already_has():
    """The build's NaN checks take each field's min and max; the statistics reuse them (one pass fewer) and
    get the same bits as when they take them themselves, NaN fields included."""
    rng = np.random.default_rng(4)
    block = rng.normal(280, 20, size=(6, 3, 8, 9)).astype(np.float32)
    block[1, 2, 4, 4] = np.nan
    rows = block.reshape(6, 3, -1)
    lo, hi = rows.min(axis=2), rows.max(axis=2)
    assert step_moments(block, (lo, hi)).tobytes() == step_moments(block).tobytes()
    clean = block[2:]
    lo, hi = lo[2:], hi[2:]
    given = step_moments(clean, (lo - 1, hi + 1))  # used as given, not taken again
    assert np.array_equal(given[4], lo - 1) and np.array_equal(given[5], hi + 1)
