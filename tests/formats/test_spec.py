"""The store's conventions (formats/spec.py): mask-channel names and the normalisation both ways."""

import numpy as np
import pytest

from canonstore.formats.spec import (
    denormalise,
    mask_channel_of,
    masked_channel,
    normalisation_scale,
    normalise,
    normalise_to,
    valid_name,
)


def test_a_mask_channel_name_is_made_and_recognised_by_the_same_rule():
    assert masked_channel(valid_name("sst")) == "sst" and masked_channel(valid_name("t_valid")) == "t_valid"
    assert masked_channel("sst") is None and masked_channel("valid") is None
    # a `_valid` name is a mask only beside its channel
    assert mask_channel_of(["sst", "t2m", "sst_valid", "x_valid"]) == {"sst": "sst_valid"}


def test_normalisation_scale_never_divides_by_zero():
    assert normalisation_scale(np.array([2.0, 0.0, np.nan])).tolist() == [2.0, 1.0, 1.0]


def test_denormalise_undoes_normalise_per_channel_on_any_axis():
    rng = np.random.default_rng(0)
    x = rng.normal(280.0, 15.0, (5, 3, 4, 6))
    x[:, 2] = 7.0  # a constant channel: std 0, scale 1
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    stored = normalise(x, mean, std)
    assert np.allclose(stored[:, 0].std(), 1.0) and np.all(stored[:, 2] == 0)
    np.testing.assert_allclose(denormalise(stored, mean, std), x, rtol=1e-12)
    last = np.moveaxis(x, 1, -1)
    np.testing.assert_allclose(denormalise(normalise(last, mean, std, channel_axis=-1), mean, std, -1), last)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_normalise_to_is_normalise_then_astype_bit_for_bit(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(1000.0, 50.0, (7, 4, 5, 9))
    x[2, 1, 3, 4] = np.nan  # filled: 0 in both
    mean, std = rng.normal(1000.0, 10.0, 4), np.array([50.0, 0.0, 3.0, 80.0])
    expected = normalise(x.copy(), mean, std).astype(dtype)
    got = normalise_to(x, mean, std, dtype, chunk_bytes=3 * 8 * 45)  # chunks that split a step's channels
    assert got.dtype == dtype and np.array_equal(got.view(np.uint8), expected.view(np.uint8))
