"""Forecasts as files: written by a run, scored by `canonstore score`, equal to scoring in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.errors import ConfigError, RunError
from canonstore.formats import open_store
from canonstore.training import evaluate, load_config, train
from canonstore.training.evaluate import load_run, score
from canonstore.training.forecasts import forecast_path, score_forecast, write_forecast
from canonstore.training.metrics import TargetMasks, area_weights
from canonstore.training.models import reference_climatology

TINY = {"model": "unet", "unet": {"width": 4, "depth": 2}, "epochs": 1, "batch_size": 64, "device": "cpu",
        "workers": 1, "patience": 0, "checkpoint_steps": 0}


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def run(tiny_store, tmp_path_factory):
    return train(load_config(None, TINY), tiny_store, tmp_path_factory.mktemp("runs"), progress=False, log=quiet)


def test_a_forecast_file_is_physical_xarray_and_scores_as_in_memory(run, tiny_store, tmp_path):
    path = write_forecast(run, "test", out_dir=tmp_path / "forecasts", log=quiet)
    assert path == forecast_path(run.name, "test", tmp_path / "forecasts")
    store = open_store(tiny_store)
    fc = xr.open_zarr(path)
    assert sorted(fc.data_vars) == sorted(store.channels) and fc["z500"].dims == ("time", "lead", "latitude", "longitude")
    assert fc["z500"].attrs["units"] == "m**2 s**-2" and fc.attrs["run"] == run.name
    np.testing.assert_array_equal(fc["valid_time"].values[:, 0], fc["time"].values + np.timedelta64(6, "h"))
    np.testing.assert_array_equal(fc["latitude"].values, store.to_xarray()["latitude"].values)
    # the file holds the model's output in physical units
    cfg, _, model, loader, _ = load_run(run, "test")
    x, y = next(iter(loader))
    with torch.inference_mode():
        first = model(x[:1]).double().numpy()[0]
    i = store.channels.index("t850")
    np.testing.assert_allclose(fc["t850"].values[0, 0], first[i] * store.stats["std"][i] + store.stats["mean"][i],
                               rtol=1e-6)
    # scoring the file gives what scoring in memory gives
    targets = loader.dataset.targets
    direct = score(model, loader, store, area_weights(store, targets, True), TargetMasks(store, loader.dataset),
                   reference_climatology(store, targets))
    scored = score_forecast(path, store)["scores"]
    assert scored["samples"] == direct["samples"]
    for key in ("rmse", "mae", "acc", "r2", "rmse_pooled"):
        assert scored["overall"][key] == pytest.approx(direct["overall"][key], rel=1e-5), key
        assert scored["channels"]["z500"][key] == pytest.approx(direct["channels"]["z500"][key], rel=1e-5), key


def test_evaluate_is_forecast_plus_score_and_another_project_file_scores_the_same(run, tiny_store, tmp_path):
    out = evaluate(run, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts", log=quiet)
    saved = json.loads(out.read_text())
    assert saved["forecast"] == str(forecast_path(run.name, "test", tmp_path / "forecasts"))
    # another project's file: persistence written with xarray alone, a subset of channels
    store = open_store(tiny_store)
    fc = xr.open_zarr(saved["forecast"])
    steps = np.searchsorted(store.time, fc["time"].values)
    physical = store.denormalise(np.stack([np.asarray(store.array[int(s)]) for s in steps]).astype(np.float64))
    theirs = xr.Dataset({n: (("time", "lead", "latitude", "longitude"),
                             physical[:, [store.channels.index(n)]].astype(np.float32)) for n in ("t850", "z500")},
                        coords={"time": fc["time"].values, "lead": [1], "valid_time": fc["valid_time"]})
    theirs.to_zarr(tmp_path / "persistence.zarr")
    result = CliRunner().invoke(main, ["score", str(tmp_path / "persistence.zarr"), "--store", str(tiny_store),
                                       "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    mine = json.loads((tmp_path / "p.json").read_text())["scores"]["channels"]
    persistence = train(load_config(None, {**TINY, "model": "persistence"}), tiny_store, run.parent, progress=False,
                        log=quiet)
    reference = json.loads(evaluate(persistence, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts",
                                    log=quiet).read_text())["scores"]["channels"]
    for name in ("t850", "z500"):
        assert mine[name]["rmse"] == pytest.approx(reference[name]["rmse"], rel=1e-5)
    assert (tmp_path / "forecasts" / persistence.name / "test.zarr").is_dir()  # each run its own file


def test_a_forecast_of_other_times_or_channels_is_refused(tiny_store, tmp_path):
    store = open_store(tiny_store)
    grid = {"latitude": store.to_xarray()["latitude"].values, "longitude": store.to_xarray()["longitude"].values}
    zeros = np.zeros((2, 1) + store.shape[2:], np.float32)
    dims = ("time", "lead", "latitude", "longitude")
    times = np.array(["1990-01-01", "1990-01-02"], dtype="datetime64[ns]")
    xr.Dataset({"t850": (dims, zeros)}, coords={"time": times, "lead": [1], "valid_time": (("time", "lead"),
               times[:, None]), **grid}).to_zarr(tmp_path / "old.zarr")
    with pytest.raises(RunError, match="valid time 1990-01-01.* is not a step of"):
        score_forecast(tmp_path / "old.zarr", store)
    xr.Dataset({"sst": (dims, zeros)}, coords={"time": store.time[:2], "lead": [1], "valid_time": (
        ("time", "lead"), store.time[:2, None])}).to_zarr(tmp_path / "sst.zarr")
    with pytest.raises(RunError, match=r"variable\(s\) \['sst'\] are not channels"):
        score_forecast(tmp_path / "sst.zarr", store)


def test_a_rollout_forecast_file_holds_every_lead_and_scores_each_as_in_memory(tiny_store, tmp_path):
    config = load_config(None, {**TINY, "rollout": 3, "encodings": ["doy", "hod"]})
    folder = train(config, tiny_store, tmp_path / "runs", progress=False, log=quiet)
    path = write_forecast(folder, "val", out_dir=tmp_path / "forecasts", log=quiet)
    fc = xr.open_zarr(path)
    assert fc["lead"].values.tolist() == [1, 2, 3] and fc.attrs["rollout"] == 3
    np.testing.assert_array_equal(fc["valid_time"].values[:, 2], fc["time"].values + np.timedelta64(18, "h"))
    store = open_store(tiny_store)
    _, _, model, loader, _ = load_run(folder, "val")
    targets = loader.dataset.targets
    direct = score(model, loader, store, area_weights(store, targets, True), TargetMasks(store, loader.dataset),
                   reference_climatology(store, targets))
    scored = score_forecast(path, store)["leads"]
    assert sorted(scored) == sorted(direct["leads"]) == [1, 2, 3]
    for lead in (1, 2, 3):
        for key in ("rmse", "acc", "mae"):
            assert scored[lead]["overall"][key] == pytest.approx(direct["leads"][lead]["overall"][key], rel=1e-5)


def test_a_one_step_run_forecasts_k_steps_autoregressively(run, tiny_store, tmp_path):
    one = write_forecast(run, "test", out_dir=tmp_path / "forecasts", log=quiet)
    out = evaluate(run, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts", log=quiet, steps=3)
    saved = json.loads(out.read_text())
    assert out.name == f"{run.name}-steps3.json" and saved["config"]["rollout"] == 3
    assert saved["forecast"] == str(forecast_path(run.name, "test", tmp_path / "forecasts", steps=3))
    assert list(saved["leads"]) == ["1", "2", "3"]
    rolled, single = xr.open_zarr(saved["forecast"]), xr.open_zarr(one)
    assert rolled["lead"].values.tolist() == [1, 2, 3] and rolled.sizes["time"] == single.sizes["time"] - 2
    # its first step is the one-step forecast from the same initial time
    np.testing.assert_allclose(rolled["z500"].isel(lead=0).values,
                               single["z500"].sel(time=rolled["time"]).isel(lead=0).values, rtol=1e-6)
    persistence = train(load_config(None, {**TINY, "model": "persistence"}), tiny_store, run.parent, progress=False,
                        log=quiet)
    with pytest.raises(ConfigError, match="steps=3: only a trained model"):
        evaluate(persistence, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts", log=quiet, steps=3)


def test_steps_refuses_a_run_with_history_at_a_lead_above_one(run, tmp_path):
    """After its first step a rollout would feed forecasts `lead` steps apart as the history, which the model
    learned one step apart: refused for --steps (forecast and evaluate), before any file is written."""
    import shutil

    folder = tmp_path / "runs" / run.name
    shutil.copytree(run, folder)                                   # the same run, as if trained with history 1 at lead 2
    info = json.loads((folder / "config.json").read_text())
    info["config"].update(history=1, lead=2)
    (folder / "config.json").write_text(json.dumps(info))
    for command in (write_forecast, evaluate):
        with pytest.raises(ConfigError, match=r"steps=3 with history: 1 and lead: 2 would feed the model inputs 2 "
                                              r"steps apart"):
            command(folder, **({"out_dir": tmp_path / "fc"} if command is write_forecast else
                               {"forecasts_dir": tmp_path / "fc"}), log=quiet, steps=3)
    assert not (tmp_path / "fc").exists()
