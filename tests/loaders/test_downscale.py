"""Coarsen and interpolate back: exact on what the coarse grid can hold, smooth fields survive,
and longitude wraps at the dateline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from canonstore.loaders.downscale import CoarseUp, coarse_factor, coarse_up, coarse_up_patches, upsample
from canonstore.loaders.patches import crop, epoch_patches, patch_indices

LAT, LON = 32, 64


def grid():
    lat = torch.linspace(90 - 90 / LAT, -90 + 90 / LAT, LAT)[:, None].deg2rad()
    lon = (torch.arange(LON) * 360 / LON)[None, :].deg2rad()
    return lat, lon


def test_a_smooth_field_survives_the_round_trip():
    lat, lon = grid()
    # linear in latitude: coarse-cell means are the values at the coarse centres, and bilinear between
    # centres is exact; only the half coarse cell next to each pole (clamped, nothing beyond) differs
    ramp = (lat * torch.ones_like(lon))[None, None].double()
    error = (coarse_up(ramp, (4, 4), periodic=True) - ramp).abs()[0, 0].amax(dim=1)
    assert error[2:-2].max() < 1e-6 and error[:2].max() > 0.01  # (the grid itself is float32)
    # a smooth wave: second-order accurate (halving the coarse cells divides the error by about 4)
    field = (torch.cos(lat) ** 2 * torch.cos(lon) + 0.5 * torch.sin(lat))[None, None].double()
    errors = [(coarse_up(field, (k, k), periodic=True) - field).abs().max().item() for k in (2, 4, 8)]
    assert errors[0] < 0.02 and errors[0] * 3 < errors[1] < errors[2] / 3


def test_a_constant_and_the_coarse_means_are_kept():
    const = torch.full((2, 3, LAT, LON), 7.0, dtype=torch.float64)
    assert torch.allclose(coarse_up(const, (4, 8), periodic=True), const)
    coarse = torch.randn(1, 1, 8, 16, dtype=torch.float64)
    fine = upsample(coarse, (4, 4), periodic=True)
    assert fine.shape == (1, 1, 32, 64) and fine.min() >= coarse.min() and fine.max() <= coarse.max()  # no overshoot


def test_longitude_is_periodic_at_the_dateline():
    lat, lon = grid()
    field = torch.exp(-((lon - 0.05) ** 2) / 0.05) * torch.ones_like(lat)  # a bump astride the dateline
    field = field[None, None].double()
    back = coarse_up(field, (4, 4), periodic=True)
    for shift in (4, 8, 20):  # shifting by whole coarse cells commutes
        rolled = coarse_up(field.roll(shift, dims=-1), (4, 4), periodic=True)
        assert torch.allclose(rolled, back.roll(shift, dims=-1), atol=1e-12)
    assert back[..., 0].mean() > 0.3 and back[..., -1].mean() > 0.1  # both sides of the dateline see the bump
    assert math.isclose(back[..., LON // 2].abs().max().item(), 0.0, abs_tol=1e-6)


def test_the_coarse_grid_must_divide_the_grid():
    assert coarse_factor((32, 64), [8, 16]) == (4, 4) and coarse_factor((32, 64), 2) == (2, 2)
    with pytest.raises(ValueError, match="does not divide"):
        coarse_factor((32, 64), [10, 16])
    assert np.isfinite(coarse_up(torch.randn(1, 1, 8, 16), (2, 2), periodic=True).numpy()).all()


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("factor", [(4, 4), (2, 3), (3, 5)])
def test_a_patch_s_coarse_up_is_the_whole_field_s_coarse_up_cut_bit_for_bit(periodic, factor):
    """The coarse-up of whole fields before a patch is cut cost 30x the patch's own (184 x 360, 32 x 32 patches,
    3 whole-field copies): a patch's coarse-up from the coarse cells around it is the same, to the bit, at the
    poles, a regional grid's edges and across the dateline, for float64, float32 and float16 batches."""
    generator = torch.Generator().manual_seed(0)
    grid = (24, 60)
    for size in ((8, 8), (5, 7), (1, 1), (24, 60)):
        rows, cols = patch_indices(6, grid, size, generator, periodic=periodic)
        edges = [
            (torch.arange(size[0]), torch.arange(size[1])),  # north-west corner
            (grid[0] - size[0] + torch.arange(size[0]), grid[1] - size[1] + torch.arange(size[1])),
        ]
        if periodic:
            edges.append((torch.arange(size[0]), (grid[1] - 2 + torch.arange(size[1])) % grid[1]))  # the dateline
        rows = torch.cat([rows, *[r[None] for r, _ in edges]])
        cols = torch.cat([cols, *[c[None] for _, c in edges]])
        samples = torch.arange(len(rows)) % 4
        for dtype in (torch.float64, torch.float32, torch.float16):
            x = torch.randn(4, 3, *grid, generator=generator, dtype=torch.float64).to(dtype)
            whole = crop(coarse_up(x, factor, periodic=periodic), rows, cols, samples)
            assert torch.equal(coarse_up_patches(x, factor, rows, cols, samples, periodic=periodic), whole)


def test_coarse_up_cuts_patches_as_the_whole_fields_would_give_them():
    """`CoarseUp.cut` (what the batch loader calls with patches): the coarse-upped dynamic inputs, the static and
    encoding channels after them as they are, and the targets, all cut alike; per-epoch patches too."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 5, 24, 48, generator=generator), torch.randn(3, 2, 24, 48, generator=generator)
    transform = CoarseUp((4, 4), 3, periodic=True)
    rows, cols = patch_indices(3, (24, 48), (9, 10), generator, periodic=True)
    for cut in ((rows, cols, None), epoch_patches(3, rows, cols)[1:] + epoch_patches(3, rows, cols)[:1]):
        whole_x, whole_y = transform(x, y)
        got_x, got_y = transform.cut(x, y, *cut)
        assert torch.equal(got_x, crop(whole_x, *cut)) and torch.equal(got_y, crop(whole_y, *cut))


def test_downscaling_trains_on_coarse_up_inputs_and_is_scored_on_the_reconstructed_field(tiny_store, tmp_path):
    import json

    from canonstore.formats import open_store
    from canonstore.training import evaluate, load_config, train
    from canonstore.training.data import make_loader

    base = {
        "task": "downscaling",
        "coarse": [4, 8],
        "unet": {"width": 4, "depth": 1},
        "epochs": 1,
        "batch_size": 64,
        "device": "cpu",
        "workers": 1,
        "patience": 0,
        "checkpoint_steps": 0,
        "targets": ["t850", "z500"],
    }
    config = load_config(None, base)
    store = open_store(tiny_store)
    from canonstore.training.runs import resolve

    run = resolve(config, store, "cpu")
    assert run["lead"] == 0 and run["history"] == 0
    loader = make_loader(run, store, "val", torch.device("cpu"), train=False)
    x, y = next(iter(loader))
    t850 = loader.dataset.input_channels.index("t850")
    assert torch.allclose(x[:, t850], coarse_up(y[:, :1], (2, 2), periodic=True)[:, 0], atol=1e-6)  # never the HR field
    assert not torch.allclose(x[:, t850], y[:, 0])
    static = loader.dataset.input_channels.index("lsm")  # conditioning stays HR
    assert torch.equal(x[0, static], torch.from_numpy(loader.dataset.static[0]))
    scores = {}
    for model in ("unet", "coarse-up"):
        folder = train(
            load_config(None, {**base, "model": model}),
            tiny_store,
            tmp_path / "runs",
            progress=False,
        )
        scores[model] = json.loads(evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "fc").read_text())[
            "leads"
        ]["0"]
    for s in scores.values():  # the same errors: only r2 and ACC see the difference between R and y
        for name in ("t850", "z500"):
            assert s["channels"][name]["rmse"] == pytest.approx(s["residual"]["channels"][name]["rmse"], rel=1e-6)
    assert scores["coarse-up"]["residual"]["channels"]["t850"]["r2"] == pytest.approx(0.0, abs=0.05)  # R_pred = 0
    assert scores["unet"]["channels"]["t850"]["rmse"] > 0
    with pytest.raises(Exception, match="coarse-up is the downscaling baseline"):
        resolve(load_config(None, {"model": "coarse-up"}), store, "cpu")


def _downscaling_loader(store_path, split="val", train=False, **config):
    from canonstore.formats import open_store
    from canonstore.training import load_config
    from canonstore.training.data import make_loader
    from canonstore.training.runs import resolve

    store = open_store(store_path)
    keys = {"task": "downscaling", "device": "cpu", "workers": 1, "batch_size": 4, **config}
    return make_loader(resolve(load_config(None, keys), store, "cpu"), store, split, torch.device("cpu"), train=train)


def test_a_regional_grid_gets_nothing_from_across_the_globe_on_the_real_nrcan_file(nrcan_store):
    """NRCAN's longitude is -83..-60: the west edge must not get values from the east edge, 23 degrees away."""
    loader = _downscaling_loader(nrcan_store, coarse=4)
    assert not loader.dataset.longitude_periodic
    x, y = next(iter(loader))
    dynamic = loader.dataset.channels.size  # y[:, :dynamic]: the HR fields x came from
    # west of the first coarse cell's centre lies only that cell (its edge repeated), and so in the east
    assert torch.equal(x[:, :dynamic, :, 0], x[:, :dynamic, :, 1])
    assert torch.equal(x[:, :dynamic, :, -1], x[:, :dynamic, :, -2])
    changed = y[:, :dynamic].clone()
    changed[..., -4:] += 100.0  # the easternmost coarse cell
    before, after = (loader.transform(f, y)[0][:, :dynamic] for f in (y[:, :dynamic], changed))
    assert torch.equal(before[..., :-8], after[..., :-8])  # reaches no further than one coarse cell
    assert not torch.equal(before[..., -4:], after[..., -4:])


def test_random_patches_for_downscaling_are_cut_from_the_whole_fields_coarse_up(tiny_store, monkeypatch):
    """The coarse-up of a cut patch differed from what validation sees by up to 0.64 std: the patch now holds
    the whole field's coarse-up (the same inputs as whole-field validation), without coarse-upping whole fields."""
    loader = _downscaling_loader(tiny_store, "train", train=True, coarse=[4, 8], blocks={"size": [4, 6]})
    loader.set_epoch(0)
    with monkeypatch.context() as patch:
        patch.setattr(CoarseUp, "__call__", lambda *_: pytest.fail("whole fields coarse-upped to cut patches"))
        x, y = next(iter(loader))
    samples, rows, cols = loader.last_patches
    whole = _downscaling_loader(tiny_store, "train", coarse=[4, 8], batch_size=len(loader.dataset))
    positions = torch.from_numpy(np.searchsorted(whole.dataset.times, loader.last_steps))
    full_x = next(iter(whole))[0][positions]  # whole fields, coarse-upped as in validation
    assert x.shape[-2:] == (4, 6)
    assert torch.equal(x, crop(full_x, rows, cols, samples))
