"""Scores: per-channel MAE/RMSE/R² in physical units, area-weighted, independent of batching."""

import numpy as np
import pytest
import torch

from canonstore.formats import open_store
from canonstore.training.metrics import Scores, area_weights, weighted_mse


def physical_reference(pred, target, weights, mean, std):
    """The scores computed the long way: de-normalise both, then weighted means over time and space."""
    p = pred * std[None, :, None, None] + mean[None, :, None, None]
    t = target * std[None, :, None, None] + mean[None, :, None, None]
    w = np.broadcast_to(weights, p.shape)
    avg = lambda v: (v * w).sum(axis=(0, 2, 3)) / w.sum(axis=(0, 2, 3))  # noqa: E731
    mae, mse = avg(np.abs(p - t)), avg((p - t) ** 2)
    variance = avg(t ** 2) - avg(t) ** 2
    return mae, np.sqrt(mse), 1 - mse / variance


def test_scores_match_the_physical_computation_in_any_batching():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(10, 3, 4, 6))
    pred = target + rng.normal(scale=[[[[0.1]], [[0.5]], [[1.0]]]], size=target.shape)
    weights = rng.uniform(0.5, 1.5, size=(3, 4, 6))
    mean, std = np.array([280.0, 0.0, 1e5]), np.array([5.0, 2.0, 900.0])
    scores = Scores(torch.from_numpy(weights).float())
    for part in (slice(0, 3), slice(3, 10)):
        scores.update(torch.from_numpy(pred[part]).float(), torch.from_numpy(target[part]).float())
    result = scores.result(["t", "u", "p"], std, ["K", "m s-1", "Pa"])
    weights32 = torch.from_numpy(weights).float().double().numpy()
    mae, rmse, r2 = physical_reference(pred.astype(np.float32).astype(np.float64),
                                       target.astype(np.float32).astype(np.float64), weights32, mean, std)
    got = result["channels"]
    assert np.allclose([got[c]["mae"] for c in "tup"], mae, rtol=1e-9)
    assert np.allclose([got[c]["rmse_pooled"] for c in "tup"], rmse, rtol=1e-9)
    assert np.allclose([got[c]["r2"] for c in "tup"], r2, rtol=1e-9)
    assert got["p"]["units"] == "Pa" and result["samples"] == 10
    # overall: channels count the same, in normalised units
    assert result["overall"]["rmse_pooled"] == pytest.approx(np.sqrt(np.mean((rmse / std) ** 2)))
    assert result["loss"] == pytest.approx(np.mean((rmse / std) ** 2))


def test_perfect_forecast():
    x = torch.randn(4, 2, 3, 5)
    scores = Scores(torch.ones(2, 3, 5))
    scores.update(x, x)
    result = scores.result(["a", "b"], np.ones(2), ["1", "1"])
    assert result["overall"]["rmse"] == 0 and result["channels"]["a"]["r2"] == 1


def test_loss_is_the_mean_of_the_channel_mses():
    pred, target = torch.randn(4, 2, 3, 5), torch.randn(4, 2, 3, 5)
    weights = torch.rand(2, 3, 5)
    weights = weights / weights.mean(dim=(1, 2), keepdim=True)
    scores = Scores(weights)
    scores.update(pred, target)
    loss = scores.result(["a", "b"], np.ones(2), ["", ""])["loss"]
    assert weighted_mse(pred, target, weights).item() == pytest.approx(loss, rel=1e-5)


def test_area_weights_follow_cos_latitude(tiny_store):
    store = open_store(tiny_store)
    weights = area_weights(store, np.array([0, 3]))
    lat = store.to_xarray()["latitude"].values
    assert weights.shape == (2,) + store.shape[2:]
    assert torch.allclose(weights.mean(dim=(1, 2)), torch.ones(2))
    column = weights[0, :, 0].numpy()
    assert np.allclose(column / column.max(), np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).max(), rtol=1e-5)
    assert torch.equal(area_weights(store, np.array([0]), lat_weighted=False), torch.ones((1,) + store.shape[2:]))
