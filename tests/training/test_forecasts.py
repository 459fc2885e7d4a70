"""Forecasts as files: written by a run, scored by `canonstore score`, equal to scoring in memory."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.errors import CanonstoreError, ConfigError, RunError
from canonstore.formats import open_store
from canonstore.preprocess import build
from canonstore.training import evaluate, load_config, train
from canonstore.training.climatology import acc_reference
from canonstore.training.evaluate import score_forecast
from canonstore.training.forecasts import forecast_path, write_forecast
from canonstore.training.metrics import TargetMasks, area_weights
from canonstore.training.runs import check_same_build, load_run
from canonstore.training.scoring import score
from canonstore.units import G
from tests.helpers import linked_copy, replace_build, write_recipe

TINY = {
    "model": "unet",
    "unet": {"width": 4, "depth": 2},
    "epochs": 1,
    "batch_size": 64,
    "device": "cpu",
    "workers": 1,
    "patience": 0,
    "checkpoint_steps": 0,
}


def in_memory_scores(model, loader, store) -> dict:
    """What validation computes in memory for `model` on `loader`'s samples: what a forecast file must score."""
    targets = loader.dataset.targets
    masks = TargetMasks(store, loader.dataset)
    return score(model, loader, store, area_weights(store, targets, True), masks, acc_reference(store, targets))


@pytest.fixture(scope="module")
def run(tiny_store, tmp_path_factory):
    return train(load_config(None, TINY), tiny_store, tmp_path_factory.mktemp("runs"), progress=False)


def test_a_forecast_file_is_physical_xarray_and_scores_as_in_memory(run, tiny_store, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_forecast(run, "test", out_dir=tmp_path / "forecasts")
    assert [str(w.message) for w in caught if "zarr" in w.filename] == []  # nothing that carries no news
    assert path == forecast_path(run.name, "test", tmp_path / "forecasts")
    store = open_store(tiny_store)
    fc = xr.open_zarr(path)
    # WeatherBench 2's layout: variables as in the sources, levels along `level`, latitude increasing
    assert sorted(fc.data_vars) == ["msl", "q", "t", "t2m", "u", "v", "z"]
    assert fc["z"].dims == ("time", "prediction_timedelta", "level", "latitude", "longitude")
    assert fc["t2m"].dims == ("time", "prediction_timedelta", "latitude", "longitude")
    assert fc["prediction_timedelta"].values.tolist() == [np.timedelta64(6, "h").astype("timedelta64[ns]")]
    assert fc["level"].values.tolist() == [250.0, 500.0, 850.0] and fc["level"].attrs["units"] == "hPa"
    assert fc["z"].attrs["units"] == "m**2 s**-2" and fc.attrs["run"] == run.name
    np.testing.assert_array_equal(fc["valid_time"].values[:, 0], fc["time"].values + np.timedelta64(6, "h"))
    np.testing.assert_array_equal(fc["latitude"].values, store.to_xarray()["latitude"].values[::-1])
    assert np.all(np.diff(fc["latitude"].values) > 0)
    # the file holds the model's output in physical units
    cfg, _, model, loader, _ = load_run(run, "test")
    x, y = next(iter(loader))
    with torch.inference_mode():
        first = model(x[:1]).double().numpy()[0]
    i = store.channels.index("t850")
    np.testing.assert_allclose(
        fc["t"].sel(level=850).values[0, 0], first[i, ::-1] * store.stats["std"][i] + store.stats["mean"][i], rtol=1e-6
    )
    # scoring the file gives what scoring in memory gives
    direct = in_memory_scores(model, loader, store)
    scored = score_forecast(path, store)["scores"]
    assert scored["samples"] == direct["samples"]
    for key in ("rmse", "mae", "acc", "r2", "rmse_sqrt_before_time_avg"):
        assert scored["overall"][key] == pytest.approx(direct["overall"][key], rel=1e-5), key
        assert scored["channels"]["z500"][key] == pytest.approx(direct["channels"]["z500"][key], rel=1e-5), key


def test_evaluate_is_forecast_plus_score_and_another_project_file_scores_the_same(run, tiny_store, tmp_path):
    out = evaluate(run, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts")
    saved = json.loads(out.read_text())
    assert saved["forecast"] == str(forecast_path(run.name, "test", tmp_path / "forecasts"))
    # another project's file: persistence written with xarray alone, a subset of channels
    store = open_store(tiny_store)
    fc = xr.open_zarr(saved["forecast"])
    steps = np.searchsorted(store.time, fc["time"].values)
    physical = store.denormalise(np.stack([np.asarray(store.array[int(s)]) for s in steps]).astype(np.float64))
    theirs = xr.Dataset(
        {
            n: (("time", "lead", "latitude", "longitude"), physical[:, [store.channels.index(n)]].astype(np.float32))
            for n in ("t850", "z500")
        },
        coords={
            "time": fc["time"].values,
            "lead": [1],
            "valid_time": (("time", "lead"), fc["valid_time"].values),
            "latitude": store.to_xarray()["latitude"].values,  # the store's order (north to south)
            "longitude": store.to_xarray()["longitude"].values,
        },
    )
    theirs.to_zarr(tmp_path / "persistence.zarr")
    result = CliRunner().invoke(
        main,
        ["score", str(tmp_path / "persistence.zarr"), "--store", str(tiny_store), "--out", str(tmp_path / "p.json")],
    )
    assert result.exit_code == 0, result.output
    mine = json.loads((tmp_path / "p.json").read_text())["scores"]["channels"]
    persistence = train(load_config(None, {**TINY, "model": "persistence"}), tiny_store, run.parent, progress=False)
    reference = json.loads(
        evaluate(persistence, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts").read_text()
    )["scores"]["channels"]
    for name in ("t850", "z500"):
        assert mine[name]["rmse"] == pytest.approx(reference[name]["rmse"], rel=1e-5)
    assert (tmp_path / "forecasts" / persistence.name / "test.zarr").is_dir()  # each run its own file


def test_a_forecast_of_other_times_or_channels_is_refused(tiny_store, tmp_path):
    store = open_store(tiny_store)
    grid = {"latitude": store.to_xarray()["latitude"].values, "longitude": store.to_xarray()["longitude"].values}
    zeros = np.zeros((2, 1) + store.shape[2:], np.float32)
    dims = ("time", "lead", "latitude", "longitude")
    times = np.array(["1990-01-01", "1990-01-02"], dtype="datetime64[ns]")
    xr.Dataset(
        {"t850": (dims, zeros)},
        coords={"time": times, "lead": [1], "valid_time": (("time", "lead"), times[:, None]), **grid},
    ).to_zarr(tmp_path / "old.zarr")
    with pytest.raises(RunError, match="init time 1990-01-01.* is not a step of"):
        score_forecast(tmp_path / "old.zarr", store)
    xr.Dataset(
        {"sst": (dims, zeros)},
        coords={"time": store.time[:2], "lead": [1], "valid_time": (("time", "lead"), store.time[:2, None])},
    ).to_zarr(tmp_path / "sst.zarr")
    with pytest.raises(RunError, match=r"none of its variables \['sst'\] is a channel"):
        score_forecast(tmp_path / "sst.zarr", store)


def test_a_rollout_forecast_file_holds_every_lead_and_scores_each_as_in_memory(tiny_store, tmp_path):
    config = load_config(None, {**TINY, "rollout": 3, "encodings": ["doy", "hod"]})
    folder = train(config, tiny_store, tmp_path / "runs", progress=False)
    path = write_forecast(folder, "val", out_dir=tmp_path / "forecasts")
    fc = xr.open_zarr(path)
    hours = (fc["prediction_timedelta"].values / np.timedelta64(1, "h")).tolist()
    assert hours == [6, 12, 18] and fc.attrs["rollout"] == 3
    np.testing.assert_array_equal(fc["valid_time"].values[:, 2], fc["time"].values + np.timedelta64(18, "h"))
    store = open_store(tiny_store)
    _, _, model, loader, _ = load_run(folder, "val")
    direct = in_memory_scores(model, loader, store)
    scored = score_forecast(path, store)["leads"]
    assert sorted(scored) == sorted(direct["leads"]) == [1, 2, 3]
    for lead in (1, 2, 3):
        for key in ("rmse", "acc", "mae"):
            assert scored[lead]["overall"][key] == pytest.approx(direct["leads"][lead]["overall"][key], rel=1e-5)


def test_a_one_step_run_forecasts_k_steps_autoregressively(run, tiny_store, tmp_path):
    one = write_forecast(run, "test", out_dir=tmp_path / "forecasts")
    out = evaluate(run, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts", steps=3)
    saved = json.loads(out.read_text())
    assert out.name == f"{run.name}-steps3.json" and saved["config"]["rollout"] == 3
    assert saved["forecast"] == str(forecast_path(run.name, "test", tmp_path / "forecasts", steps=3))
    assert list(saved["leads"]) == ["1", "2", "3"]
    rolled, single = xr.open_zarr(saved["forecast"]), xr.open_zarr(one)
    assert rolled.sizes["prediction_timedelta"] == 3 and rolled.sizes["time"] == single.sizes["time"] - 2
    # its first step is the one-step forecast from the same initial time
    first, one_step = (f["z"].sel(level=500).isel(prediction_timedelta=0) for f in (rolled, single))
    np.testing.assert_allclose(first.values, one_step.sel(time=rolled["time"]).values, rtol=1e-6)
    persistence = train(load_config(None, {**TINY, "model": "persistence"}), tiny_store, run.parent, progress=False)
    with pytest.raises(ConfigError, match="steps=3: only a trained model"):
        evaluate(persistence, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts", steps=3)


DIMS = ("time", "lead", "latitude", "longitude")
CHANNELS = ("z500", "t850", "t2m", "msl")


def truth_as_forecast(store, names=CHANNELS, lead: int = 1, rows: int = 12) -> xr.Dataset:
    """A perfect forecast: the store's own truth `lead` steps after the first `rows` test steps, in
    physical units, on the store's grid with its coordinates, as another project would write it."""
    init = store.split_indices("test")[:rows]
    truth = store.denormalise(np.stack([np.asarray(store.array[int(s) + lead]) for s in init]).astype(np.float64))
    ds = store.to_xarray()
    units = [str(u) for u in ds["channel_units"].values]
    return xr.Dataset(
        {
            n: (
                DIMS,
                truth[:, None, store.channels.index(n)].astype(np.float32),
                {"units": units[store.channels.index(n)]},
            )
            for n in names
        },
        coords={
            "time": store.time[init],
            "lead": [lead],
            "valid_time": (("time", "lead"), store.time[init + lead][:, None]),
            "latitude": ds["latitude"].variable,
            "longitude": ds["longitude"].variable,
        },
    )


def rmse_of(ds: xr.Dataset, store, tmp_path, name: str = "fc") -> dict:
    ds.to_zarr(tmp_path / f"{name}.zarr", mode="w")
    return score_forecast(tmp_path / f"{name}.zarr", store)["scores"]


def one_error_line(path, store) -> str:
    result = CliRunner().invoke(main, ["score", str(path), "--store", str(store), "--out", str(path) + ".json"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def to_pm180(ds: xr.Dataset) -> xr.Dataset:
    """Longitude -180..180, ascending from the dateline (WeatherBench 2 tools, many regional files)."""
    return ds.assign_coords(longitude=((ds["longitude"] + 180) % 360) - 180).sortby("longitude")


@pytest.mark.parametrize("order", ["store", "latitude ascending", "longitude -180..180", "both, dims transposed"])
def test_a_perfect_forecast_scores_zero_in_any_grid_order(tiny_store, tmp_path, order):
    store = open_store(tiny_store)
    fc = truth_as_forecast(store)
    assert fc["latitude"].values[0] > fc["latitude"].values[-1]  # the store: north to south, like ERA5
    if order != "store":
        fc = fc.sortby("latitude") if "latitude" in order else to_pm180(fc)
    if order.startswith("both"):
        fc = to_pm180(fc).transpose("time", "lead", "longitude", "latitude")
    scores = rmse_of(fc, store, tmp_path)
    assert scores["overall"]["rmse"] < 1e-5
    assert scores["channels"]["t2m"]["rmse"] < 1e-3 and scores["channels"]["z500"]["rmse"] < 0.1


def test_a_forecast_on_another_grid_is_refused_naming_the_coordinate(tiny_store, tmp_path):
    store = open_store(tiny_store)
    fc = truth_as_forecast(store, ["t2m"])
    shifted = fc.assign_coords(latitude=fc["latitude"] + 0.75)
    with pytest.raises(RunError, match=r"latitude differs from the store's \(max 0.75 apart.*regrid"):
        rmse_of(shifted, store, tmp_path)
    with pytest.raises(RunError, match=r"longitude differs from the store's \(max 10 apart"):
        rmse_of(fc.assign_coords(longitude=fc["longitude"] + 10), store, tmp_path)
    part = fc.isel(latitude=slice(0, 4))  # the northern half: a regional forecast of a global store
    with pytest.raises(RunError, match="latitude has 4 points, the store's 8: .* regrid"):
        rmse_of(part, store, tmp_path)
    fc.drop_vars("longitude").to_zarr(tmp_path / "nolon.zarr")  # no values: its order cannot be checked
    assert "no 'longitude' coordinate" in one_error_line(tmp_path / "nolon.zarr", tiny_store)
    shifted.to_zarr(tmp_path / "shifted.zarr")
    assert "latitude differs from the store's" in one_error_line(tmp_path / "shifted.zarr", tiny_store)


def test_a_forecast_in_other_units_is_converted_or_refused(tiny_store, tmp_path):
    store = open_store(tiny_store)
    fc = truth_as_forecast(store)
    other = fc.copy()
    other["t2m"] = (fc["t2m"] - 273.15).assign_attrs(units="degC")
    other["t850"] = (fc["t850"] - 273.15).assign_attrs(units="deg_C")
    other["z500"] = (fc["z500"] / G).assign_attrs(units="m")  # geopotential height, m
    other["msl"] = (fc["msl"] / 100).assign_attrs(units="hPa")
    assert rmse_of(other, store, tmp_path, "converted")["overall"]["rmse"] < 1e-5
    unknown = fc.copy()
    unknown["t2m"] = fc["t2m"].assign_attrs(units="W m-2")
    with pytest.raises(RunError, match=r"'t2m' is in 'W m-2', the store's t2m in 'K'.*no certain conversion"):
        rmse_of(unknown, store, tmp_path, "unknown")
    # no units attribute: the store's units are assumed, and values far from them are refused
    bare = fc.copy()
    bare["t2m"].attrs.pop("units")
    assert rmse_of(bare, store, tmp_path, "bare")["overall"]["rmse"] < 1e-5
    bare["t2m"] = bare["t2m"] - 273.15
    bare.to_zarr(tmp_path / "celsius.zarr")
    assert "set its units attribute" in one_error_line(tmp_path / "celsius.zarr", tiny_store)
    wrong = fc.copy()  # says K, holds degC
    wrong["t850"] = (fc["t850"] - 273.15).assign_attrs(units="K")
    with pytest.raises(RunError, match=r"'t850' has a mean of .* train stds .* check its units attribute"):
        rmse_of(wrong, store, tmp_path, "wrong")


def test_cf_spellings_of_degrees_convert(tiny_store, tmp_path):
    """`degree_C`, `degrees_C`: the CF spellings that derived channels accepted, `score` refused."""
    store = open_store(tiny_store)
    fc = truth_as_forecast(store, ["t2m", "t850"])
    fc["t2m"] = (fc["t2m"] - 273.15).assign_attrs(units="degree_C")
    fc["t850"] = (fc["t850"] - 273.15).assign_attrs(units="degrees_C")
    assert rmse_of(fc, store, tmp_path)["overall"]["rmse"] < 1e-5


@pytest.fixture(scope="module")
def unitless_store(tmp_path_factory):
    """Daily `q` (values of g/kg) from a file without a units attribute: the store's units are ''."""
    folder = tmp_path_factory.mktemp("unitless")
    times = xr.date_range("2001-01-01", periods=3 * 365, freq="D")
    q = 5 + 4 * np.abs(np.random.default_rng(1).normal(size=(times.size, 3, 4)))
    xr.Dataset(
        {"q": (("time", "lat", "lon"), q)},
        coords={
            "time": times,
            "lat": ("lat", [10.0, 0.0, -10.0], {"units": "degrees_north"}),
            "lon": ("lon", [0.0, 90.0, 180.0, 270.0], {"units": "degrees_east"}),
        },
    ).to_netcdf(folder / "q.nc")
    recipe = write_recipe(
        folder, name="nu", sources=["q.nc"], splits={"train": [2001, 2001], "val": [2002, 2002], "test": [2003, 2003]}
    )
    return build(recipe, folder / "nu.zarr", progress=False).path


@pytest.mark.parametrize("units", ["g kg-1", "%", "1"])
def test_a_labelled_forecast_against_a_store_channel_without_units_is_refused(unitless_store, tmp_path, units):
    """'' is unknown, not dimensionless: `g kg-1` was multiplied by 1e-3 (a perfect forecast scored 3.5 std)."""
    store = open_store(unitless_store)
    assert store.to_xarray()["channel_units"].values[0] == ""
    init = store.split_indices("test")[:20]
    truth = store.denormalise(np.stack([np.asarray(store.array[int(s) + 1]) for s in init]))[:, None, 0]
    fc = xr.Dataset(
        {"q": (("time", "lead", "lat", "lon"), truth)},
        coords={"time": store.time[init], "lead": [1], "lat": [10.0, 0.0, -10.0], "lon": [0.0, 90, 180, 270]},
    )
    assert rmse_of(fc, store, tmp_path, "bare")["overall"]["rmse"] < 1e-5  # unlabelled: the store's units
    fc["q"].attrs["units"] = units
    fc.to_zarr(tmp_path / "labelled.zarr")
    line = one_error_line(tmp_path / "labelled.zarr", unitless_store)
    assert f"'q' is in '{units}', but the store's q has no units" in line and "labelled.zarr" in line


def lead_as(fc: xr.Dataset, values, attrs=None) -> xr.Dataset:
    return fc.assign_coords(lead=("lead", values, attrs or {}))


def test_a_lead_in_time_units_is_counted_in_store_steps(tiny_store, tmp_path):
    """On the 6-hourly store, lead 12 `hours` was scored as 12 store steps (72 h) when no valid_time said otherwise."""
    store = open_store(tiny_store)
    fc = truth_as_forecast(store, ["t2m"], lead=2)
    reference = rmse_of(fc, store, tmp_path, "steps")
    bare = fc.drop_vars("valid_time")
    for name, other in [
        ("hours", lead_as(bare, [12], {"units": "hours"})),
        ("h", lead_as(fc, [12.0], {"units": "h"})),
        ("days", lead_as(bare, [0.5], {"units": "days"})),
        ("timedelta", lead_as(bare, np.array([12], "timedelta64[h]").astype("timedelta64[ns]"))),
        ("store_steps", lead_as(bare, [2], {"units": "store steps"})),
    ]:
        other.to_zarr(tmp_path / f"{name}.zarr")
        result = score_forecast(tmp_path / f"{name}.zarr", store)
        assert list(result["leads"]) == [2] and result["scores"] == reference, name
    for name, other, message in [
        ("3h", lead_as(bare, [3], {"units": "hours"}), "lead 3 hours is not a whole number of the store's steps"),
        ("metres", lead_as(bare, [2], {"units": "m"}), "lead is in 'm', neither store steps nor a time"),
        ("since", lead_as(bare, [2], {"units": "hours since 2000-01-01"}), "lead holds dates (2000-01-01T02"),
    ]:
        other.to_zarr(tmp_path / f"{name}.zarr")
        assert message in one_error_line(tmp_path / f"{name}.zarr", tiny_store), name


def test_a_lead_in_hours_must_be_that_long_after_each_init_time():
    """Sessions at other rates (NWB): 6 hours is one usual step, but in a 3-hourly session one step is 3 hours."""
    from types import SimpleNamespace

    from canonstore.training.valid_times import truth_steps

    six_hourly = np.datetime64("2020-01-01T00") + np.arange(8) * np.timedelta64(6, "h")
    three_hourly = np.datetime64("2020-02-01T00") + np.arange(4) * np.timedelta64(3, "h")
    store = SimpleNamespace(time=np.concatenate([six_hourly, three_hourly]), gaps=np.array([7]), path="s.zarr")
    fc = xr.Dataset(coords={"time": six_hourly[:2], "lead": ("lead", [6, 12], {"units": "hours"})})
    assert truth_steps(fc, store, "fc.zarr")[0].tolist() == [[1, 2], [2, 3]]
    with pytest.raises(
        RunError,
        match=r"fc.zarr: lead 6 hours from init time 2020-02-01T00 is not a step of the store "
        r"\(its step 1 later is 3 hours later\)",
    ):
        truth_steps(fc.assign_coords(time=three_hourly[:1]), store, "fc.zarr")


def test_a_run_is_checked_against_the_build_the_store_opened(tiny_store, tmp_path):
    """Not against whatever the store's path holds by the time of the check (a rebuild in between)."""
    path = linked_copy(tiny_store, tmp_path / "a.zarr")
    opened = open_store(path)
    trained_on = opened.build_id
    replace_build(path)
    check_same_build(opened, {"store": {"build": trained_on}}, tmp_path / "run")
    with pytest.raises(RunError, match="is not the build run run was trained on"):
        check_same_build(opened, {"store": {"build": open_store(path).build_id}}, tmp_path / "run")


def test_valid_time_is_checked_and_each_forecast_counts_once(tiny_store, tmp_path):
    store = open_store(tiny_store)
    fc = truth_as_forecast(store, ["t2m"], lead=2)
    late = fc.assign_coords(valid_time=fc["valid_time"] + np.timedelta64(6, "h"))  # scored at lead 3 today
    with pytest.raises(
        RunError,
        match=rf"valid_time .* of \(time {fc['time'].values[0]}, lead 2\) is not the "
        r"store's time .* \(12 such\)",
    ):
        rmse_of(late, store, tmp_path, "late")
    # no valid_time: lead counts store steps, so it is the time `lead` steps after the init time
    reference = rmse_of(fc, store, tmp_path, "with")
    without = rmse_of(fc.drop_vars("valid_time"), store, tmp_path, "without")
    assert without == reference and without["samples"] == 12 and without["overall"]["rmse"] < 1e-5
    with pytest.raises(RunError, match="no 'lead' coordinate"):  # else lead would silently be 0, 1, ...
        rmse_of(fc.drop_vars("lead"), store, tmp_path, "nolead")
    twice = xr.concat([fc, fc + 1], dim="time")  # 12 init times, each twice
    twice.to_zarr(tmp_path / "twice.zarr")
    line = one_error_line(tmp_path / "twice.zarr", tiny_store)
    assert "init time(s)" in line and "appear more than once (12 repeats)" in line


def test_acc_on_a_store_shorter_than_a_year_is_against_the_climatology_it_supports(short_hourly_store, tmp_path):
    """White noise around a diurnal cycle: persistence's anomalies do not correlate with the truth's."""
    store = open_store(short_hourly_store)
    persistence = truth_as_forecast(store, ["t2m"], lead=0, rows=90).assign_coords(lead=[1])
    persistence = persistence.assign_coords(valid_time=persistence["valid_time"] + np.timedelta64(1, "h"))
    persistence.to_zarr(tmp_path / "persistence.zarr")
    result = CliRunner().invoke(
        main,
        [
            "score",
            str(tmp_path / "persistence.zarr"),
            "--store",
            str(short_hourly_store),
            "--out",
            str(tmp_path / "scores.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert abs(saved["scores"]["channels"]["t2m"]["acc"]) < 0.3  # it was 0.98 against an extrapolated fit
    reference = saved["acc_climatology"]
    assert reference["window_days"] == 61 and len(reference["hours_of_day"]) == 24  # WB2's day x hour means


def test_a_noleap_store_scores_its_own_calendar_and_refuses_another(tmp_path):
    times = xr.date_range("2001-01-01", periods=3 * 365, freq="D", calendar="noleap", use_cftime=True)
    tas = 280 + np.random.default_rng(0).normal(size=(times.size, 3, 4))
    xr.Dataset(
        {"tas": (("time", "lat", "lon"), tas, {"units": "K"})},
        coords={
            "time": times,
            "lat": ("lat", [10.0, 0.0, -10.0], {"units": "degrees_north"}),
            "lon": ("lon", [0.0, 90.0, 180.0, 270.0], {"units": "degrees_east"}),
        },
    ).to_netcdf(tmp_path / "t.nc")
    recipe = write_recipe(
        tmp_path, name="nl", sources=["t.nc"], splits={"train": [2001, 2001], "val": [2002, 2002], "test": [2003, 2003]}
    )
    store = open_store(build(recipe, tmp_path / "nl.zarr", progress=False).path)
    init = store.split_indices("test")[:10]
    truth = store.denormalise(np.stack([np.asarray(store.array[int(s) + 1]) for s in init]))[:, None, 0]
    fc = xr.Dataset(
        {"tas": (("time", "lead", "lat", "lon"), truth - 273.15, {"units": "degC"})},
        coords={"time": store.time[init], "lead": [1], "lat": [10.0, 0.0, -10.0], "lon": [0.0, 90, 180, 270]},
    )
    fc = fc.sortby("lat").assign_coords(lon=[0.0, 90, -180, -90]).sortby("lon")
    fc.to_zarr(tmp_path / "fc.zarr")
    assert score_forecast(tmp_path / "fc.zarr", store)["scores"]["overall"]["rmse"] < 1e-5
    standard = fc.assign_coords(time=np.array([f"2003-01-{d:02d}" for d in range(1, 11)], dtype="datetime64[ns]"))
    standard.to_zarr(tmp_path / "standard.zarr")  # was a raw TypeError
    assert "write them in the store's calendar" in one_error_line(tmp_path / "standard.zarr", store.path)


def test_steps_refuses_a_run_with_history_at_a_lead_above_one(run, tmp_path):
    """After its first step a rollout would feed forecasts `lead` steps apart as the history, which the model
    learned one step apart: refused for --steps (forecast and evaluate), before any file is written."""
    import shutil

    folder = tmp_path / "runs" / run.name
    shutil.copytree(run, folder)  # the same run, as if trained with history 1 at lead 2
    info = json.loads((folder / "config.json").read_text())
    info["config"].update(history=1, lead=2)
    (folder / "config.json").write_text(json.dumps(info))
    for command in (write_forecast, evaluate):
        with pytest.raises(
            ConfigError,
            match=r"steps=3 with history: 1 and lead: 2 would feed the model inputs 2 "
            r"steps apart",
        ):
            command(
                folder,
                **({"out_dir": tmp_path / "fc"} if command is write_forecast else {"forecasts_dir": tmp_path / "fc"}),
                steps=3,
            )
    assert not (tmp_path / "fc").exists()


def test_a_forecast_never_deletes_a_users_folder_at_its_path_or_staging(run, tmp_path):
    """Only canonstore's own forecast file (and its marked staging) is ever replaced."""
    out = forecast_path(run.name, "test", tmp_path / "forecasts")
    first = write_forecast(run, "test", out_dir=tmp_path / "forecasts")
    assert first == out and not (out.with_name(out.name + ".partial")).exists()
    write_forecast(run, "test", out_dir=tmp_path / "forecasts")  # an earlier forecast file: replaced
    staging = out.with_name(out.name + ".partial")
    staging.mkdir()
    (staging / "notes.txt").write_text("mine")
    with pytest.raises(CanonstoreError, match="not canonstore's"):
        write_forecast(run, "test", out_dir=tmp_path / "forecasts")
    assert (staging / "notes.txt").read_text() == "mine"
    (staging / "notes.txt").unlink()
    staging.rmdir()
    users = forecast_path(run.name, "val", tmp_path / "forecasts")
    users.mkdir(parents=True)
    (users / "thesis.tex").write_text("mine")
    with pytest.raises(RunError, match="not a forecast file canonstore wrote"):
        write_forecast(run, "val", out_dir=tmp_path / "forecasts")
    assert (users / "thesis.tex").read_text() == "mine"
