"""Scores: per-channel MAE/RMSE/R² in physical units, area-weighted, independent of batching."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from canonstore import open_dataset
from canonstore.formats import open_store
from canonstore.preprocess import build
from canonstore.training.metrics import Scores, TargetMasks, area_weights, weighted_mse
from tests.helpers import gappy_values, write_recipe

silent = {"progress": False}


def wb2_lat_weights(lat: np.ndarray) -> np.ndarray:
    """WeatherBench 2's get_lat_weights (metrics.py), for latitudes in increasing order: cell areas between the
    midpoints and the poles, normalised to mean 1."""
    x = np.deg2rad(lat)
    bounds = np.concatenate([[-np.pi / 2], (x[:-1] + x[1:]) / 2, [np.pi / 2]])
    weights = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    return weights / weights.mean()


def physical_reference(pred, target, weights, mean, std):
    """The scores computed the long way: de-normalise both, then weighted means over time and space."""
    p = pred * std[None, :, None, None] + mean[None, :, None, None]
    t = target * std[None, :, None, None] + mean[None, :, None, None]
    w = np.broadcast_to(weights, p.shape)
    avg = lambda v: (v * w).sum(axis=(0, 2, 3)) / w.sum(axis=(0, 2, 3))  # noqa: E731
    mae, mse = avg(np.abs(p - t)), avg((p - t) ** 2)
    variance = avg(t**2) - avg(t) ** 2
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
    mae, rmse, r2 = physical_reference(
        pred.astype(np.float32).astype(np.float64), target.astype(np.float32).astype(np.float64), weights32, mean, std
    )
    got = result["channels"]
    assert np.allclose([got[c]["mae"] for c in "tup"], mae, rtol=1e-9)
    assert np.allclose([got[c]["rmse"] for c in "tup"], rmse, rtol=1e-9)  # weights alike at every time: = pooled
    assert np.allclose([got[c]["r2"] for c in "tup"], r2, rtol=1e-9)
    assert got["p"]["units"] == "Pa" and result["samples"] == 10
    # overall: channels count the same, in normalised units
    assert result["overall"]["rmse"] == pytest.approx(np.mean(rmse / std))
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


def test_area_weights_are_weatherbench2s_cell_areas(tiny_store):
    store = open_store(tiny_store)
    weights = area_weights(store, np.array([0, 3]))
    lat = store.to_xarray()["latitude"].values
    assert lat[0] > lat[-1]  # north to south: WB2's formula wants them increasing
    assert weights.shape == (2,) + store.shape[2:]
    assert torch.allclose(weights.mean(dim=(1, 2)), torch.ones(2))
    column = weights[0, :, 0].numpy()
    assert np.allclose(column, wb2_lat_weights(lat[::-1])[::-1], rtol=1e-6)
    assert torch.equal(area_weights(store, np.array([0]), lat_weighted=False), torch.ones((1,) + store.shape[2:]))


def test_weatherbench2_scores_per_time_then_averaged():
    """rmse: each time's MSE, averaged, then the root; rmse_sqrt_before_time_avg: the roots averaged; mae and bias
    per time, averaged; ACC per sample against the climatology, then mean."""
    rng = np.random.default_rng(1)
    target, clim = rng.normal(size=(6, 2, 3, 4)), rng.normal(size=(6, 2, 3, 4)) * 0.5
    pred = target + rng.normal(scale=0.3, size=target.shape) + 0.1
    weights = rng.uniform(0.5, 1.5, size=(2, 3, 4))
    std = np.array([2.0, 10.0])
    scores = Scores(torch.from_numpy(weights))
    for part in (slice(0, 4), slice(4, 6)):
        scores.update(*(torch.from_numpy(a[part]) for a in (pred, target)), climatology=torch.from_numpy(clim[part]))
    got = scores.result(["a", "b"], std, ["K", "m"])["channels"]
    w = weights[None]
    mean_space = lambda v: (v * w).sum(axis=(2, 3)) / w.sum(axis=(2, 3))  # noqa: E731  (time, channel)
    error = pred - target
    rmse = np.sqrt(mean_space(error**2).mean(axis=0)) * std
    rmse_before = np.sqrt(mean_space(error**2)).mean(axis=0) * std
    bias, mae = mean_space(error).mean(axis=0) * std, mean_space(np.abs(error)).mean(axis=0) * std
    f, o = pred - clim, target - clim
    acc = (mean_space(f * o) / np.sqrt(mean_space(f**2) * mean_space(o**2))).mean(axis=0)
    assert np.allclose([got[c]["rmse"] for c in "ab"], rmse, rtol=1e-9)
    assert np.allclose([got[c]["rmse_sqrt_before_time_avg"] for c in "ab"], rmse_before, rtol=1e-9)
    assert np.allclose([got[c]["bias"] for c in "ab"], bias, rtol=1e-9)
    assert np.allclose([got[c]["mae"] for c in "ab"], mae, rtol=1e-9)
    assert np.allclose([got[c]["acc"] for c in "ab"], acc, rtol=1e-9)
    assert all(got[c]["rmse_sqrt_before_time_avg"] < got[c]["rmse"] for c in "ab")  # mean of roots < root of mean


def test_the_acc_of_the_climatology_itself_is_undefined_even_through_float32():
    """The climatology written to a forecast file comes back with float32 rounding: no correlation to report."""
    rng = np.random.default_rng(2)
    clim = torch.from_numpy(rng.normal(size=(5, 1, 3, 4)) * 3 + 280)
    target = clim + torch.from_numpy(rng.normal(size=clim.shape))
    scores = Scores(torch.ones(1, 3, 4, dtype=torch.float64))
    scores.update(clim.float(), target, climatology=clim)
    assert np.isnan(scores.result(["t"], np.ones(1), ["K"])["channels"]["t"]["acc"])
    scores.update(clim.float() + 0.01, target, climatology=clim)  # a forecast: its ACC counts
    assert np.isfinite(scores.result(["t"], np.ones(1), ["K"])["channels"]["t"]["acc"])


def test_filled_points_weigh_nothing_in_loss_and_scores(gappy_store):
    store = open_store(gappy_store)
    ds = open_dataset(store, "test", lead=1, target_masks=True)
    masks = TargetMasks(store, ds)
    x, y = (torch.from_numpy(a) for a in ds.gather(np.arange(len(ds))))
    target, valid = masks.split(y)
    raw = gappy_values(store.shape[0])[ds.times + 1]  # the raw values, NaN where filled
    assert target.shape == (len(ds), 2, 2, 3) and valid.shape == target.shape
    assert torch.equal(valid[:, 0].bool(), torch.from_numpy(~np.isnan(raw[:, 0]))) and bool(valid[:, 1].all())
    weights = torch.ones(2, 2, 3)
    forecast = target + 0.1
    wild = torch.where(valid.bool(), forecast, torch.full_like(forecast, 1e6))  # nonsense where filled
    assert weighted_mse(wild, target, weights, valid).item() == pytest.approx(0.01, rel=1e-4)
    scores = Scores(weights)
    scores.update(wild, target, valid)
    channels = scores.result(["x", "y"], np.ones(2), ["K", "m s-1"])["channels"]
    assert channels["x"]["rmse"] == pytest.approx(0.1, rel=1e-4) and channels["x"]["mae"] == pytest.approx(0.1)


def test_persistence_scores_skip_filled_points_end_to_end(gappy_store, tmp_path):
    import json

    from canonstore.training import evaluate, load_config, train

    config = load_config(None, {"model": "persistence", "device": "cpu", "lat_weighted": False, "workers": 1})
    folder = train(config, gappy_store, tmp_path, progress=False)
    scores = json.loads(evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts").read_text())[
        "scores"
    ]
    store = open_store(gappy_store)
    t = open_dataset(store, "test").times
    raw = gappy_values(store.shape[0])[:, 0]
    error = raw[t + 1] - np.where(np.isnan(raw[t]), store.stats["mean"][0], raw[t])  # a filled input is the mean
    per_time = np.nanmean(error.reshape(len(t), -1) ** 2, axis=1)  # each time over its observed points (WB2)
    assert scores["channels"]["x"]["rmse"] == pytest.approx(np.sqrt(np.nanmean(per_time)), rel=1e-4)
    assert set(scores["channels"]) == {"x", "y"}  # x_valid is no target


def test_cmip_lat_named_lat_is_area_weighted(tmp_path, real):
    recipe = write_recipe(
        tmp_path,
        name="canesm5",
        sources=[str(real / "prsn_day_*.nc")],
        splits={"train": [1991, 2004], "test": [2005, 2010]},
    )
    store = open_store(build(recipe, tmp_path / "canesm5.zarr", **silent).path)
    assert store.latitude == "lat" and store.longitude == "lon" and store.attrs["latitude"] == "lat"
    lat = store.to_xarray()["lat"].values
    column = area_weights(store, np.array([0]))[0, :, 0].numpy()
    assert lat.min() > 40 and lat.max() < 55  # a regional cut: its edge rows are half a row wide, not pole-bound
    assert np.allclose(column / column.max(), np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).max(), rtol=1e-3)


def test_curvilinear_latitude_weighs_each_cell(tmp_path):
    lat2d = np.array([[0.0, 10.0, 20.0], [40.0, 50.0, 60.0]])
    times = pd.date_range("2000-01-01", periods=731, freq="D")
    xr.Dataset(
        {"tos": (("time", "y", "x"), np.random.default_rng(0).normal(size=(731, 2, 3)), {"units": "K"})},
        coords={
            "time": times,
            "nav_lat": (("y", "x"), lat2d, {"standard_name": "latitude"}),
            "nav_lon": (("y", "x"), lat2d * 2, {"standard_name": "longitude"}),
        },
    ).to_netcdf(tmp_path / "curvi.nc")
    recipe = write_recipe(
        tmp_path, name="curvi", sources=["curvi.nc"], splits={"train": [2000, 2000], "test": [2001, 2001]}
    )
    store = open_store(build(recipe, tmp_path / "curvi.zarr", **silent).path)
    assert store.latitude == "nav_lat" and store.longitude == "nav_lon"
    weights = area_weights(store, np.array([0]))[0].numpy()
    expected = np.cos(np.deg2rad(lat2d))
    assert np.allclose(weights, expected / expected.mean(), rtol=1e-5)


def test_stations_get_no_area_weighting_and_the_run_says_so(tmp_path, real, caplog):
    from canonstore.training import load_config, train

    recipe = write_recipe(
        tmp_path,
        name="cities",
        sources=[str(real / "daily_surface_cancities_1990-1993.nc")],
        variables=["tas", "pr"],
        splits={"train": [1990, 1991], "val": [1992, 1992], "test": [1993, 1993]},
    )
    store = open_store(build(recipe, tmp_path / "cities.zarr", **silent).path)
    assert store.latitude == "lat"  # recorded, but lat(location) has no cells
    assert torch.equal(area_weights(store, np.array([0, 1])), torch.ones(2, 5))
    config = load_config(None, {"model": "persistence", "device": "cpu", "workers": 1})
    folder = train(config, store, tmp_path / "runs", progress=False)
    run = json.loads((folder / "config.json").read_text())["config"]
    assert run["lat_weighting"].startswith("none: the samples are points along ('location',)")
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("canonstore")
    ]
    assert run["warnings"] and any(line.startswith("lat_weighted is true") for line in warned)


def test_nan_where_nothing_weighs_and_a_point_without_climatology_leave_the_scores_finite():
    """0 x NaN is NaN: a NaN forecast at a point of weight 0 made every score of the channel NaN, and a point
    whose climatology is NaN (filled at every train step) made its ACC NaN."""
    rng = np.random.default_rng(3)
    target = torch.from_numpy(rng.normal(size=(4, 1, 3, 4)))
    forecast = target + 0.1 * torch.from_numpy(rng.normal(size=target.shape))
    clim = torch.zeros_like(target)
    weights = torch.ones(1, 3, 4, dtype=torch.float64)
    weights[0, 0, 0] = 0  # masked: a land point of an ocean channel
    holes = forecast.clone()
    holes[:, 0, 0, 0] = float("nan")
    clim_holes = clim.clone()
    clim_holes[:, 0, 1, 1] = float("nan")
    reference, scores = Scores(weights), Scores(weights)
    reference.update(forecast, target, climatology=clim)
    scores.update(holes, target, climatology=clim)
    got, expected = (s.result(["sst"], np.ones(1), ["K"])["channels"]["sst"] for s in (scores, reference))
    for key in ("rmse", "mae", "bias", "acc", "r2"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    no_climatology = Scores(weights)
    no_climatology.update(forecast, target, climatology=clim_holes)
    channel = no_climatology.result(["sst"], np.ones(1), ["K"])["channels"]["sst"]
    assert np.isfinite(channel["acc"]) and channel["acc_times"] == 4
