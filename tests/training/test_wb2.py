"""WeatherBench 2 interop: a WB2-layout forecast written with xarray alone scores as canonstore's own layout does, and
as an independent implementation (the `scores` package, WB2's formulas in xarray) computes, to 1e-6."""

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.formats import open_store
from canonstore.preprocess import build
from canonstore.training.evaluate import score_forecast
from tests.helpers import write_recipe
from tests.training.test_climatology import wb2_hourly_climatology

scores_continuous = pytest.importorskip("scores.continuous")

LEVELS = [500.0, 850.0]
LAT = [60.0, 20.0, -20.0, -60.0]  # north to south, as ERA5 NetCDF; WB2's files go south to north
LON = np.arange(0.0, 360.0, 45.0)
LEADS = [1, 2]  # store steps: 6 and 12 hours


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """6-hourly t2m and z at 500/850 hPa, 2000-2001 train and 20 days of 2002 test, a seasonal and daily cycle."""
    folder = tmp_path_factory.mktemp("wb2")
    times = pd.date_range("2000-01-01", "2002-01-20T18", freq="6h")
    rng = np.random.default_rng(0)
    doy, hour = times.day_of_year.values, times.hour.values
    cycle = (np.sin(2 * np.pi * doy / 366) + 0.5 * np.cos(2 * np.pi * hour / 24))[:, None, None]
    t2m = 280 + 10 * cycle + rng.normal(size=(times.size, len(LAT), LON.size))
    z = np.stack([50000 + 800 * cycle, 14000 + 400 * cycle], axis=1) + 100 * rng.normal(
        size=(times.size, len(LEVELS), len(LAT), LON.size)
    )
    xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), t2m, {"units": "K", "standard_name": "air_temperature"}),
            "z": (("time", "level", "latitude", "longitude"), z, {"units": "m**2 s**-2", "long_name": "Geopotential"}),
        },
        coords={
            "time": times,
            "level": ("level", LEVELS, {"units": "hPa"}),
            "latitude": ("latitude", LAT, {"units": "degrees_north"}),
            "longitude": ("longitude", LON, {"units": "degrees_east"}),
        },
    ).to_netcdf(folder / "era5.nc")
    recipe = write_recipe(folder, name="wb2", sources=["era5.nc"], splits={"train": [2000, 2001], "test": [2002, 2002]})
    return open_store(build(recipe, folder / "wb2.zarr", progress=False).path)


def truth_and_forecast(store, rows: int = 16):
    """(init steps, physical truth (time, lead, channel, lat, lon), a forecast: truth + noise), store order."""
    init = store.split_indices("test")[:rows]
    steps = init[:, None] + np.asarray(LEADS)[None, :]
    truth = store.denormalise(np.asarray(store.array[:])[steps].astype(np.float64), channel_axis=2)
    noise = np.random.default_rng(1).normal(size=truth.shape) * store.stats["std"][None, None, :, None, None] * 0.3
    return init, truth, (truth + noise).astype(np.float32)


def wb2_file(store, init, forecast) -> xr.Dataset:
    """The forecast in WB2's layout, written with xarray alone: long names, timedelta leads, latitude increasing,
    geopotential on a `level` dim (with a level the store lacks), longitude before latitude."""
    c = store.channels
    geopotential = np.stack([forecast[:, :, c.index("z500")], forecast[:, :, c.index("z850")]], axis=2)
    geopotential = np.concatenate([geopotential, geopotential[:, :, :1]], axis=2)[..., ::-1, :]  # + 1000 hPa
    return xr.Dataset(
        {
            "2m_temperature": (
                ("time", "prediction_timedelta", "latitude", "longitude"),
                forecast[:, :, c.index("t2m"), ::-1],
                {"units": "K"},
            ),
            "geopotential": (
                ("time", "prediction_timedelta", "level", "latitude", "longitude"),
                geopotential,
                {"units": "m**2 s**-2"},
            ),
        },
        coords={
            "time": store.time[init],
            "prediction_timedelta": np.array([6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]"),
            "level": [500, 850, 1000],
            "latitude": LAT[::-1],
            "longitude": LON,
        },
    ).transpose("time", "prediction_timedelta", "level", "longitude", "latitude")


def canonstore_file(store, init, forecast) -> xr.Dataset:
    """The same values in canonstore's older layout: one variable per channel, lead in store steps, store order."""
    dims = ("time", "lead", "latitude", "longitude")
    return xr.Dataset(
        {n: (dims, forecast[:, :, k], {"units": str(u)}) for k, (n, u) in enumerate(zip(store.channels, units(store)))},
        coords={"time": store.time[init], "lead": LEADS, "latitude": LAT, "longitude": LON},
    )


def units(store):
    return store.to_xarray()["channel_units"].values


def test_a_wb2_file_scores_as_canonstores_own_layout(store, tmp_path):
    init, _, forecast = truth_and_forecast(store)
    wb2_file(store, init, forecast).to_zarr(tmp_path / "wb2.zarr")
    canonstore_file(store, init, forecast).to_zarr(tmp_path / "ours.zarr")
    theirs, ours = score_forecast(tmp_path / "wb2.zarr", store), score_forecast(tmp_path / "ours.zarr", store)
    assert theirs["not_scored"] == ["geopotential@1000hPa"] and ours["not_scored"] == []
    for lead in (1, 2):
        for name in store.channels:
            for key in ("rmse", "mae", "bias", "acc", "rmse_sqrt_before_time_avg"):
                got, expected = theirs["leads"][lead]["channels"][name][key], ours["leads"][lead]["channels"][name][key]
                assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (lead, name, key)


def test_scores_agree_with_the_scores_package_and_wb2s_acc(store, tmp_path):
    init, truth, forecast = truth_and_forecast(store)
    wb2_file(store, init, forecast).to_zarr(tmp_path / "wb2.zarr")
    got = score_forecast(tmp_path / "wb2.zarr", store)["leads"]
    lat = np.deg2rad(np.asarray(LAT[::-1]))
    bounds = np.concatenate([[-np.pi / 2], (lat[:-1] + lat[1:]) / 2, [np.pi / 2]])
    weights = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    weights = xr.DataArray((weights / weights.mean())[::-1], dims="latitude", coords={"latitude": LAT})
    train = store.split_indices("train")
    obs_train = store.to_xarray()["data"].isel(time=train).load()
    for k, lead in enumerate(LEADS):
        valid = store.time[init + lead]
        for c, name in enumerate(store.channels):
            dims, coords = ("time", "latitude", "longitude"), {"time": valid, "latitude": LAT, "longitude": LON}
            fc = xr.DataArray(forecast[:, k, c].astype(np.float64), dims=dims, coords=coords)
            obs = xr.DataArray(truth[:, k, c], dims=dims, coords=coords)
            space = ["latitude", "longitude"]
            mse = scores_continuous.mse(fc, obs, reduce_dims=space, weights=weights)
            mae = scores_continuous.mae(fc, obs, reduce_dims=space, weights=weights)
            bias = scores_continuous.mean_error(fc, obs, reduce_dims=space, weights=weights)
            mine = got[lead]["channels"][name]
            assert mine["rmse"] == pytest.approx(float(np.sqrt(mse.mean("time"))), rel=1e-6), name
            assert mine["mae"] == pytest.approx(float(mae.mean("time")), rel=1e-6), name
            assert mine["bias"] == pytest.approx(float(bias.mean("time")), rel=1e-6, abs=1e-9), name
            # ACC as WB2's metrics.ACC computes it, against WB2's hourly climatology of the train split
            clim = wb2_hourly_climatology(obs_train.isel(channel=c)) * store.stats["std"][c] + store.stats["mean"][c]
            at = np.stack([clim.sel(hour=t.hour, dayofyear=t.day_of_year).values for t in pd.DatetimeIndex(valid)])
            f, o = fc - at, obs - at
            mean = lambda v: v.weighted(weights).mean(["latitude", "longitude"])  # noqa: E731
            acc = mean(f * o) / np.sqrt(mean(f**2) * mean(o**2))
            assert mine["acc"] == pytest.approx(float(acc.mean("time")), rel=1e-6), name


def test_score_reads_a_netcdf_wb2_file_and_renames_on_request(store, tmp_path):
    """`score` on the command line, with a NetCDF WB2 file and --rename for a name outside the table."""
    init, _, forecast = truth_and_forecast(store)
    theirs = wb2_file(store, init, forecast).rename({"2m_temperature": "tas"})
    theirs.to_netcdf(tmp_path / "wb2.nc")
    out = tmp_path / "scores.json"
    args = ["score", str(tmp_path / "wb2.nc"), "--store", str(store.path), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["not_scored"] == ["tas", "geopotential@1000hPa"]  # said, never guessed
    result = CliRunner().invoke(main, [*args, "--rename", "tas=t2m"])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert set(saved["scores"]["channels"]) == {"t2m", "z500", "z850"}
    assert saved["not_scored"] == ["geopotential@1000hPa"] and "not scored" in result.output


def scored_channels(store, fc: xr.Dataset, path, rename=None) -> dict:
    fc.to_zarr(path)
    return score_forecast(path, store, rename=rename)


def test_a_level_the_writer_filled_with_nan_is_no_forecast(store, tmp_path):
    """canonstore's writer pads a variable's missing levels with NaN (levels_written says which are real); they
    were matched to the store's channels of those levels and scored as NaN, pulling overall R² up."""
    init, _, forecast = truth_and_forecast(store)
    fc = wb2_file(store, init, forecast).isel(level=[0, 1])  # geopotential at 500 and 850
    fc["geopotential"] = fc["geopotential"].where(fc["level"] == 500)
    fc["geopotential"].attrs.update(units="m**2 s**-2", levels_written=[500.0])
    result = scored_channels(store, fc, tmp_path / "padded.zarr")
    assert set(result["scores"]["channels"]) == {"t2m", "z500"} and result["not_scored"] == []
    assert np.isfinite(result["scores"]["overall"]["r2"])


def test_the_writer_records_which_levels_it_wrote(tiny_store):
    from canonstore.training.forecasts import _template
    from canonstore.training.wb2_layout import ForecastLayout

    demo = open_store(tiny_store)
    layout = ForecastLayout.of(demo, ["z500", "t850"])
    template = _template(demo, layout, ["z500", "t850"], np.arange(3), [1], {})
    assert template["level"].values.tolist() == [500.0, 850.0]
    assert template["z"].attrs["levels_written"] == [500.0] and template["t"].attrs["levels_written"] == [850.0]


def test_rename_reaches_long_names_and_channel_names(store, tmp_path):
    init, _, forecast = truth_and_forecast(store)
    fc = wb2_file(store, init, forecast)
    geo500 = fc["geopotential"].sel(level=500, drop=True)
    theirs = xr.Dataset({"my_t": fc["2m_temperature"], "geo": geo500})
    result = scored_channels(store, theirs, tmp_path / "renamed.zarr", {"my_t": "2m_temperature", "geo": "z500"})
    assert set(result["scores"]["channels"]) == {"t2m", "z500"} and result["not_scored"] == []


def test_levels_as_the_build_reads_them(store, tmp_path):
    """A scalar level coordinate (a WB2 file after .sel(level=500)), `plev` in Pa without units: as in a build."""
    init, _, forecast = truth_and_forecast(store)
    fc = wb2_file(store, init, forecast)
    scalar = xr.Dataset({"geopotential": fc["geopotential"].sel(level=500)})  # keeps level=500 as a scalar
    assert set(scored_channels(store, scalar, tmp_path / "scalar.zarr")["scores"]["channels"]) == {"z500"}
    pa = fc[["geopotential"]].isel(level=[0, 1]).rename(level="plev").assign_coords(plev=[50000, 85000])
    assert set(scored_channels(store, pa, tmp_path / "pa.zarr")["scores"]["channels"]) == {"z500", "z850"}


def test_two_file_variables_for_one_channel_are_refused(store, tmp_path):
    from canonstore.errors import RunError

    init, _, forecast = truth_and_forecast(store)
    fc = wb2_file(store, init, forecast)
    fc["t2m"] = fc["2m_temperature"]
    with pytest.raises(RunError, match="2m_temperature and t2m are both the store's t2m|t2m and 2m_temperature"):
        scored_channels(store, fc, tmp_path / "twice.zarr")


def test_a_nan_where_the_store_scores_is_refused(store, tmp_path):
    from canonstore.errors import RunError

    init, _, forecast = truth_and_forecast(store)
    fc = wb2_file(store, init, forecast)
    fc["2m_temperature"][3, 0, 2, 1] = np.nan
    with pytest.raises(RunError, match="'t2m' at lead 1 is NaN at 1 point"):
        scored_channels(store, fc, tmp_path / "hole.zarr")


def test_prediction_timedelta_only_where_every_init_is_the_same_time_ahead():
    """Monthly steps are 28 to 31 days apart: one timedelta per lead would be wrong for most inits, so such a store
    keeps `lead` in store steps; a 360_day calendar's months are 30 days each, and 6-hourly steps 6 hours."""
    import cftime

    from canonstore.training.forecasts import time_ahead

    hours = np.array(["2000-01-01T00", "2000-01-01T06", "2000-01-01T12"], dtype="datetime64[ns]")
    assert time_ahead(hours[:2], hours[1:, None]).tolist() == [np.timedelta64(6, "h").astype("timedelta64[ns]")]
    months = np.array(["2000-01-01", "2000-02-01", "2000-03-01"], dtype="datetime64[ns]")
    assert time_ahead(months[:2], months[1:, None]) is None  # 31 and 29 days
    days360 = np.array([cftime.Datetime360Day(2000, m, 1) for m in (1, 2, 3)])
    ahead = time_ahead(days360[:2], days360[1:, None])
    assert ahead is not None and (ahead / np.timedelta64(1, "D")).tolist() == [30.0]
    assert time_ahead(np.array([0, 1]), np.array([[1], [2]])) is None  # positions, no dates


def test_a_prediction_timedelta_without_time_units_is_refused(store, tmp_path):
    """WB2's `prediction_timedelta` is a time; plain integers there (6, 12: hours that lost their units) were
    counted as store steps, scoring each forecast against the truth 36 and 72 hours ahead without a word."""
    from canonstore.errors import RunError

    init, _, forecast = truth_and_forecast(store)
    fc = wb2_file(store, init, forecast).assign_coords(prediction_timedelta=[6, 12])
    with pytest.raises(RunError, match="prediction_timedelta holds int64 without time units"):
        scored_channels(store, fc, tmp_path / "bare.zarr")
    hours = fc.assign_coords(prediction_timedelta=("prediction_timedelta", [6, 12], {"units": "hours"}))
    assert set(scored_channels(store, hours, tmp_path / "hours.zarr")["leads"]) == {1, 2}


def test_an_infinite_value_where_the_store_scores_is_refused(store, tmp_path):
    """float16 overflows to inf (geopotential above 65504 m**2 s**-2, at 400 hPa and up): past the first batch of
    init times, which the units check reads, an inf scored RMSE, MAE and bias inf and ACC NaN without an error."""
    from canonstore.errors import RunError

    init, _, forecast = truth_and_forecast(store, rows=70)
    fc = wb2_file(store, init, forecast)
    fc["2m_temperature"][68, 0, 2, 1] = np.inf
    with pytest.raises(RunError, match="'t2m' at lead 1 is infinite at 1 point"):
        scored_channels(store, fc, tmp_path / "overflow.zarr")
    fc["2m_temperature"][68, 0, 2, 1] = 280.0
    fc["2m_temperature"][3, 0, 2, 1] = np.inf  # in the batch the units check reads: the same words
    with pytest.raises(RunError, match="'t2m' at lead 1 is infinite at 1 point"):
        scored_channels(store, fc, tmp_path / "overflow-first.zarr")


def test_a_store_recipes_rename_reaches_the_files_variables(tmp_path):
    """A store whose recipe renamed `2m_temperature` to `tas`: a file that spells it as the source did was refused
    as 'none of its variables is a channel' (next to other variables: not scored), though the README says the
    recipe's `rename:` adds that spelling and the store records `2m_temperature` as the channel's variable."""
    times = pd.date_range("2000-01-01", "2001-01-05T18", freq="6h")
    values = 280 + np.random.default_rng(0).normal(size=(times.size, len(LAT), LON.size))
    coords = {"time": times, "latitude": ("latitude", LAT, {"units": "degrees_north"}), "longitude": LON}
    xr.Dataset({"2m_temperature": (("time", "latitude", "longitude"), values, {"units": "K"})}, coords).to_netcdf(
        tmp_path / "t.nc"
    )
    recipe = write_recipe(
        tmp_path, name="tas", sources=["t.nc"], rename={"2m_temperature": "tas"}, splits={"train": [2000, 2000]}
    )
    tas = open_store(build(recipe, tmp_path / "tas.zarr", progress=False).path)
    init = np.arange(8)
    fc = xr.Dataset(
        {"2m_temperature": (("time", "prediction_timedelta", "latitude", "longitude"), values[init + 1, None] + 0.5)},
        {**coords, "time": times[init], "prediction_timedelta": np.array([6], "timedelta64[h]").astype("m8[ns]")},
    )
    result = scored_channels(tas, fc, tmp_path / "source-spelling.zarr")
    assert result["not_scored"] == [] and result["scores"]["channels"]["tas"]["rmse"] == pytest.approx(0.5)
