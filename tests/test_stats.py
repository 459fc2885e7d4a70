import numpy as np

from canonstore.formats.store import normalisation_scale
from canonstore.preprocess.stats import RunningStats


def test_blockwise_stats_equal_numpy_in_float64_with_nans():
    rng = np.random.default_rng(1)
    data = rng.normal(5e4, 300, size=(50, 3, 4, 5))       # geopotential-like: large mean, small spread
    data[3, 1, 2, 2] = np.nan
    data[7:9, 2] = np.nan
    stats = RunningStats(3)
    for start in range(0, 50, 7):
        stats.update(data[start:start + 7])
    per_channel = np.moveaxis(data, 1, 0).reshape(3, -1)
    result = stats.as_dict()
    np.testing.assert_allclose(result["mean"], np.nanmean(per_channel, axis=1), rtol=1e-13)
    np.testing.assert_allclose(result["std"], np.nanstd(per_channel, axis=1), rtol=1e-9)
    np.testing.assert_array_equal(result["min"], np.nanmin(per_channel, axis=1))
    np.testing.assert_array_equal(result["max"], np.nanmax(per_channel, axis=1))
    assert result["nan_count"].tolist() == [0, 1, 2 * 20]
    assert result["count"].tolist() == [1000, 999, 960]
    np.testing.assert_allclose(result["sum"], np.nansum(per_channel, axis=1), rtol=1e-12)
    np.testing.assert_allclose(result["sum_sq"], np.nansum(per_channel ** 2, axis=1), rtol=1e-12)


def test_a_channel_without_values_has_nan_stats():
    stats = RunningStats(2)
    block = np.ones((4, 2, 3))
    block[:, 1] = np.nan
    stats.update(block)
    result = stats.as_dict()
    assert result["mean"][0] == 1 and np.isnan(result["mean"][1]) and np.isnan(result["std"][1])


def test_normalisation_scale_never_divides_by_zero():
    assert normalisation_scale(np.array([2.0, 0.0, np.nan])).tolist() == [2.0, 1.0, 1.0]
