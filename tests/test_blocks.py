"""Random blocks: periodic in longitude, clamped in latitude, the same crop for inputs and targets."""

import numpy as np
import pytest
import torch

from canonstore.loaders import random_blocks
from canonstore.loaders.blocks import block_indices


def test_blocks_wrap_in_longitude_and_stay_inside_in_latitude():
    rows, cols = block_indices(2000, (10, 16), (4, 6), torch.Generator().manual_seed(0))
    assert rows.min() >= 0 and rows.max() <= 9
    assert ((rows[:, 1:] - rows[:, :-1]) == 1).all()                       # contiguous, never wrapped
    assert (((cols[:, 1:] - cols[:, :-1]) % 16) == 1).all()                 # consecutive modulo 16
    assert ((cols[:, 0] > cols[:, -1])).any()                               # some blocks cross the dateline
    assert (rows[:, 0] == 0).sum() > (rows[:, 0] == 3).sum()               # pole centres are clamped, not dropped
    with pytest.raises(ValueError, match="does not fit"):
        block_indices(1, (10, 16), (11, 4), torch.Generator())


def test_crop_is_the_same_block_of_x_and_y_and_reproducible():
    x = torch.randn(5, 3, 10, 16)
    y = torch.randn(5, 2, 10, 16)
    bx, by = random_blocks(x, y, (4, 6), torch.Generator().manual_seed(1))
    rows, cols = block_indices(5, (10, 16), (4, 6), torch.Generator().manual_seed(1))
    assert bx.shape == (5, 3, 4, 6) and by.shape == (5, 2, 4, 6)
    for b in range(5):
        np.testing.assert_array_equal(bx[b], x[b].numpy()[:, rows[b]][:, :, cols[b]])
        np.testing.assert_array_equal(by[b], y[b].numpy()[:, rows[b]][:, :, cols[b]])
    again = random_blocks(x, y, (4, 6), torch.Generator().manual_seed(1))
    assert torch.equal(again[0], bx) and torch.equal(again[1], by)
