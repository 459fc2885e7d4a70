"""Random patches: periodic in longitude, clamped in latitude, the same crop for inputs and targets."""

import numpy as np
import pytest
import torch

from canonstore import open_dataset
from canonstore.loaders import random_patches
from canonstore.loaders.patches import patch_indices


def test_patches_wrap_in_longitude_and_stay_inside_in_latitude():
    rows, cols = patch_indices(2000, (10, 16), (4, 6), torch.Generator().manual_seed(0), periodic=True)
    assert rows.min() >= 0 and rows.max() <= 9
    assert ((rows[:, 1:] - rows[:, :-1]) == 1).all()  # contiguous, never wrapped
    assert (((cols[:, 1:] - cols[:, :-1]) % 16) == 1).all()  # consecutive modulo 16
    assert (cols[:, 0] > cols[:, -1]).any()  # some patches cross the dateline
    assert (rows[:, 0] == 0).sum() > (rows[:, 0] == 3).sum()  # pole centres are clamped, not dropped
    with pytest.raises(ValueError, match="does not fit"):
        patch_indices(1, (10, 16), (11, 4), torch.Generator(), periodic=True)


def test_crop_is_the_same_patch_of_x_and_y_and_reproducible():
    x = torch.randn(5, 3, 10, 16)
    y = torch.randn(5, 2, 10, 16)
    bx, by = random_patches(x, y, (4, 6), torch.Generator().manual_seed(1), periodic=True)
    rows, cols = patch_indices(5, (10, 16), (4, 6), torch.Generator().manual_seed(1), periodic=True)
    assert bx.shape == (5, 3, 4, 6) and by.shape == (5, 2, 4, 6)
    for b in range(5):
        np.testing.assert_array_equal(bx[b], x[b].numpy()[:, rows[b]][:, :, cols[b]])
        np.testing.assert_array_equal(by[b], y[b].numpy()[:, rows[b]][:, :, cols[b]])
    again = random_patches(x, y, (4, 6), torch.Generator().manual_seed(1), periodic=True)
    assert torch.equal(again[0], bx) and torch.equal(again[1], by)


def test_patches_per_epoch_cut_every_sample_at_the_same_patches_reproducibly(tiny_store):
    from canonstore import open_store
    from canonstore.loaders import BatchLoader

    store = open_store(tiny_store)
    dataset = open_dataset(store, "train", static=False)

    def epoch(e, seed=0, start=0):
        loader = BatchLoader(
            dataset, 4, shuffle=True, seed=seed, device="cpu", workers=1, patch_size=(4, 6), patches_per_epoch=3
        )
        loader.set_epoch(e, start)
        out = []
        for x, y in loader:
            out.append((x.clone(), y.clone(), [t.clone() if t is not None else None for t in loader.last_patches]))
            if len(out) == 2:
                break
        return out

    first = epoch(0)
    x, y, (samples, rows, cols) = first[0]
    assert x.shape == (12, len(dataset.input_channels), 4, 6) and y.shape[0] == 12
    assert samples.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # the epoch's 3 patches, the same for every sample and every batch of the epoch
    assert torch.equal(rows[:3], rows[3:6]) and torch.equal(cols[:3], cols[9:12])
    assert torch.equal(first[1][2][1], rows) and torch.equal(first[1][2][2], cols)
    full = next(iter(BatchLoader(dataset, 4, shuffle=True, seed=0, device="cpu", workers=1)))[0]
    np.testing.assert_array_equal(x[4], full[1].numpy()[:, rows[4]][:, :, cols[4]])  # sample 1, patch 1
    again = epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    resumed = epoch(0, start=1)[0]  # resuming mid-epoch: the same patches
    assert torch.equal(resumed[2][1], rows) and torch.equal(resumed[0], first[1][0])
    assert not torch.equal(epoch(1)[0][2][1][:3], rows[:3]) or not torch.equal(epoch(1)[0][2][2][:3], cols[:3])


def test_patches_on_a_regional_grid_never_wrap_from_east_to_west():
    rows, cols = patch_indices(2000, (10, 16), (4, 6), torch.Generator().manual_seed(0), periodic=False)
    assert ((cols[:, 1:] - cols[:, :-1]) == 1).all() and cols.min() == 0 and cols.max() == 15  # inside, edges reached
    wrapped = patch_indices(2000, (10, 16), (4, 6), torch.Generator().manual_seed(0), periodic=True)
    assert torch.equal(rows, wrapped[0])  # the same draws, only the columns clamped
    assert (cols[:, 0] == 0).sum() > (cols[:, 0] == 3).sum()  # edge centres are shifted, not dropped


def test_the_loader_cuts_regional_patches_inside_the_real_nrcan_grid(nrcan_store):
    from canonstore.loaders import BatchLoader

    dataset = open_dataset(nrcan_store, "train", static=False)
    assert not dataset.longitude_periodic
    loader = BatchLoader(dataset, 4, shuffle=True, seed=0, device="cpu", workers=1, patch_size=(8, 200))
    seen = []
    for _ in loader:
        cols = loader.last_patches[2]
        assert ((cols[:, 1:] - cols[:, :-1]) == 1).all() and cols.max() < 276  # never from -60 back to -83
        seen.append(cols[:, 0])
    assert torch.cat(seen).min() == 0 and torch.cat(seen).max() == 76
