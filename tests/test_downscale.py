"""Coarsen and interpolate back: exact on what the coarse grid can hold, smooth fields survive,
and longitude wraps at the dateline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from canonstore.loaders.downscale import coarse_factor, coarse_up, upsample

LAT, LON = 32, 64


def grid():
    lat = torch.linspace(90 - 90 / LAT, -90 + 90 / LAT, LAT)[:, None].deg2rad()
    lon = (torch.arange(LON) * 360 / LON)[None, :].deg2rad()
    return lat, lon


def test_a_smooth_field_survives_the_round_trip():
    lat, lon = grid()
    # linear in latitude: block means are the values at the coarse centres, and bilinear between
    # centres is exact; only the half coarse cell next to each pole (clamped, nothing beyond) differs
    ramp = (lat * torch.ones_like(lon))[None, None].double()
    error = (coarse_up(ramp, (4, 4)) - ramp).abs()[0, 0].amax(dim=1)
    assert error[2:-2].max() < 1e-6 and error[:2].max() > 0.01  # (the grid itself is float32)
    # a smooth wave: second-order accurate (halving the coarse cells divides the error by about 4)
    field = (torch.cos(lat) ** 2 * torch.cos(lon) + 0.5 * torch.sin(lat))[None, None].double()
    errors = [(coarse_up(field, (k, k)) - field).abs().max().item() for k in (2, 4, 8)]
    assert errors[0] < 0.02 and errors[0] * 3 < errors[1] < errors[2] / 3


def test_a_constant_and_the_coarse_means_are_kept():
    const = torch.full((2, 3, LAT, LON), 7.0, dtype=torch.float64)
    assert torch.allclose(coarse_up(const, (4, 8)), const)
    coarse = torch.randn(1, 1, 8, 16, dtype=torch.float64)
    fine = upsample(coarse, (4, 4))
    assert fine.shape == (1, 1, 32, 64) and fine.min() >= coarse.min() and fine.max() <= coarse.max()  # no overshoot


def test_longitude_is_periodic_at_the_dateline():
    lat, lon = grid()
    field = torch.exp(-((lon - 0.05) ** 2) / 0.05) * torch.ones_like(lat)   # a bump astride the dateline
    field = field[None, None].double()
    back = coarse_up(field, (4, 4))
    for shift in (4, 8, 20):                                           # shifting by whole coarse cells commutes
        rolled = coarse_up(field.roll(shift, dims=-1), (4, 4))
        assert torch.allclose(rolled, back.roll(shift, dims=-1), atol=1e-12)
    assert back[..., 0].mean() > 0.3 and back[..., -1].mean() > 0.1   # both sides of the dateline see the bump
    assert math.isclose(back[..., LON // 2].abs().max().item(), 0.0, abs_tol=1e-6)


def test_the_coarse_grid_must_divide_the_grid():
    assert coarse_factor((32, 64), [8, 16]) == (4, 4) and coarse_factor((32, 64), 2) == (2, 2)
    with pytest.raises(ValueError, match="does not divide"):
        coarse_factor((32, 64), [10, 16])
    assert np.isfinite(coarse_up(torch.randn(1, 1, 8, 16), (2, 2)).numpy()).all()


def test_downscaling_trains_on_coarse_up_inputs_and_is_scored_on_the_reconstructed_field(tiny_store, tmp_path):
    import json

    from canonstore.formats import open_store
    from canonstore.training import evaluate, load_config, train
    from canonstore.training.data import make_loader

    base = {"task": "downscaling", "coarse": [4, 8], "unet": {"width": 4, "depth": 1}, "epochs": 1,
            "batch_size": 64, "device": "cpu", "workers": 1, "patience": 0, "checkpoint_steps": 0,
            "targets": ["t850", "z500"]}
    config = load_config(None, base)
    store = open_store(tiny_store)
    from canonstore.training.config import resolve

    run = resolve(config, store, "cpu")
    assert run["lead"] == 0 and run["history"] == 0
    loader = make_loader(run, store, "val", torch.device("cpu"), train=False)
    x, y = next(iter(loader))
    t850 = loader.dataset.input_channels.index("t850")
    assert torch.allclose(x[:, t850], coarse_up(y[:, :1], (2, 2))[:, 0], atol=1e-6)   # never the HR field
    assert not torch.allclose(x[:, t850], y[:, 0])
    static = loader.dataset.input_channels.index("lsm")                               # conditioning stays HR
    assert torch.equal(x[0, static], torch.from_numpy(loader.dataset.static[0]))
    scores = {}
    for model in ("unet", "coarse-up"):
        folder = train(load_config(None, {**base, "model": model}), tiny_store, tmp_path / "runs", progress=False,
                       log=lambda *_: None)
        scores[model] = json.loads(evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "fc",
                                            log=lambda *_: None).read_text())["leads"]["0"]
    for model, s in scores.items():  # the same errors: only r2 and ACC see the difference between R and y
        for name in ("t850", "z500"):
            assert s["channels"][name]["rmse"] == pytest.approx(s["residual"]["channels"][name]["rmse"], rel=1e-6)
    assert scores["coarse-up"]["residual"]["channels"]["t850"]["r2"] == pytest.approx(0.0, abs=0.05)  # R_pred = 0
    assert scores["unet"]["channels"]["t850"]["rmse"] > 0
    with pytest.raises(Exception, match="coarse-up is the downscaling baseline"):
        resolve(load_config(None, {"model": "coarse-up"}), store, "cpu")
