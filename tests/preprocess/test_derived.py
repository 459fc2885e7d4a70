"""Derived channels: the formulas against hand computations, and channels built like any other."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from canonstore import open_store
from canonstore.errors import RecipeError, SourceError
from canonstore.preprocess import build, derived, load_recipe, open_sources
from tests.helpers import demo_recipe, write_recipe

DEMO_DERIVED = [
    {"name": "r", "kind": "relative_humidity", "temperature": "t", "specific_humidity": "q"},
    {"name": "ws", "kind": "wind_speed", "u": "u", "v": "v"},
    {"name": "tcq", "kind": "column", "variable": "q"},
    {"name": "tmean", "kind": "layer_mean", "variable": "t", "levels": [850, 500]},
]


def test_relative_humidity_matches_a_hand_computation():
    # 20 degC, q = 10 g/kg at 1000 hPa: es = 6.112 exp(17.67 * 20 / 263.5) = 23.374 hPa,
    # e = 0.01 * 1000 / (0.621981 + 0.378019 * 0.01) = 15.983 hPa, RH = 68.38 %
    assert derived.relative_humidity(np.array(293.15), np.array(0.01), 1000.0) == pytest.approx(68.38, abs=0.01)
    # saturated air: q from es gives 100 %
    t, p = 280.0, 850.0
    es = derived.saturation_vapour_pressure(np.array(t))
    q_sat = derived.EPSILON * es / (p - (1 - derived.EPSILON) * es)
    assert derived.relative_humidity(np.array(t), q_sat, p) == pytest.approx(100.0, rel=1e-12)


def test_column_and_layer_mean_integrate_over_pressure():
    values = np.full((1, 3, 2), 0.005)  # 5 g/kg at 1000, 850 and 500 hPa
    p = np.array([850.0, 1000.0, 500.0])  # any order
    assert derived.column(values, p) == pytest.approx(0.005 * 50000 / 9.80665)  # kg m**-2
    linear = np.array([300.0, 285.0, 250.0])[None, :, None] * np.ones((1, 3, 2))  # t at 1000, 850, 500 hPa
    # trapezoids: (300+285)/2 * 150 + (285+250)/2 * 350, over 500 hPa
    assert derived.layer_mean(linear, np.array([1000.0, 850.0, 500.0])) == pytest.approx(
        ((300 + 285) / 2 * 150 + (285 + 250) / 2 * 350) / 500
    )


def test_derived_channels_are_stored_with_train_statistics(tmp_path, tiny_raw):
    out = tmp_path / "derived.zarr"
    build(demo_recipe(tmp_path, tiny_raw, derived=DEMO_DERIVED), out, progress=False)
    store = open_store(out)
    names = store.channels
    assert names[-8:] == ["r250", "r500", "r850", "ws250", "ws500", "ws850", "tcq", "tmean"]
    ds = store.to_xarray()
    assert ds["channel_units"].values[names.index("r850")] == "%"
    assert ds["channel_units"].values[names.index("tcq")] == "kg m**-2"
    assert ds["channel_variable"].values[names.index("r850")] == "r"
    raw = xr.open_mfdataset(str(tiny_raw / "[tq]_*.nc"), combine="by_coords").sel(level=850)
    rh = derived.relative_humidity(raw.t.values.astype(np.float64), raw.q.values.astype(np.float64), 850.0)
    train = store.split_indices("train")
    i = names.index("r850")
    physical = np.asarray(store.array[:])[:, i].astype(np.float64) * store.stats["std"][i] + store.stats["mean"][i]
    np.testing.assert_allclose(physical, rh, rtol=2e-6, atol=1e-4)
    assert store.stats["mean"][i] == pytest.approx(rh[train].mean(), rel=1e-12)
    assert 20 < rh.mean() < 80 and rh.min() > 0 and rh.max() < 110  # the demo's humidity is plausible


def test_a_derived_channel_needing_what_the_recipe_drops_is_refused(tmp_path, tiny_raw):
    spec = [{"name": "r", "kind": "relative_humidity", "temperature": "t", "specific_humidity": "q"}]
    recipe = demo_recipe(tmp_path, tiny_raw, derived=spec, variables=["t", "z"])
    with pytest.raises(SourceError, match=r"derived 'r' \(relative_humidity\) needs variable\(s\) \['q'\]"):
        open_sources(load_recipe(recipe))
    with pytest.raises(RecipeError, match="missing \\['specific_humidity'\\]"):
        load_recipe(
            write_recipe(
                tmp_path,
                name="x",
                sources=[str(tiny_raw / "*.nc")],
                splits={"train": [2000, 2000]},
                derived=[{"name": "r", "kind": "relative_humidity", "temperature": "t"}],
            )
        )
    spec = [{"name": "tcq", "kind": "column", "variable": "q"}]
    with pytest.raises(SourceError, match="at least two kept levels"):
        open_sources(load_recipe(demo_recipe(tmp_path, tiny_raw, derived=spec, levels={"q": [500]})))


def test_the_reviewers_case_is_68_73_percent():
    # T 280 K, q 5 g/kg, 850 hPa: es = 6.112 exp(17.67 * 6.85 / 250.35) = 9.912 hPa,
    # e = 0.005 * 850 / (0.621981 + 0.378019 * 0.005) = 6.812 hPa, RH = 68.73 %
    assert derived.relative_humidity(np.array(280.0), np.array(0.005), 850.0) == pytest.approx(68.73, abs=0.005)


# t and q at 850 and 500 hPa (10 steps, 2x3 grid) in K and kg/kg, the reviewer's case at step 0, first cell
KELVIN_T = np.array([280.0, 255.0])[None, :, None, None] + np.random.default_rng(0).normal(0, 2, (10, 2, 2, 3))
KG_Q = np.array([0.005, 0.001])[None, :, None, None] * np.exp(np.random.default_rng(1).normal(0, 0.2, (10, 2, 2, 3)))
KELVIN_T[0, 0, 0, 0], KG_Q[0, 0, 0, 0] = 280.0, 0.005


def humid_files(folder, t_units="K", q_units="kg kg**-1", levels=(850.0, 500.0), level_units="hPa"):
    """t and q on two pressure levels (10 daily steps, 2x3 grid) in the units asked; None: no attribute."""
    t = KELVIN_T - (273.15 if t_units in ("degC", "celsius-unlabelled") else 0.0)
    q = KG_Q * (1000.0 if q_units in ("g kg**-1", "g/kg-unlabelled") else 1.0)
    folder.mkdir(exist_ok=True)
    coords = {
        "time": pd.date_range("2020-01-01", periods=10, freq="D"),
        "lat": [10.0, 0.0],
        "lon": [0.0, 1.0, 2.0],
        "level": ("level", list(levels), {} if level_units is None else {"units": level_units}),
    }
    for name, values, units in (("t", t, t_units), ("q", q, q_units)):
        attrs = {} if units is None or units.endswith("-unlabelled") else {"units": units}
        ds = xr.Dataset({name: (("time", "level", "lat", "lon"), values, attrs)}, coords=coords)
        ds.to_netcdf(folder / f"{name}.nc")
    return folder


RH_AND_COLUMN = [
    {"name": "r", "kind": "relative_humidity", "temperature": "t", "specific_humidity": "q"},
    {"name": "tcq", "kind": "column", "variable": "q"},
]


def humid_recipe(tmp_path, folder, **keys):
    return write_recipe(
        tmp_path,
        name="humid",
        sources=[str(folder / "*.nc")],
        derived=RH_AND_COLUMN,
        splits={"by": "index", "train": [0, 9]},
        **keys,
    )


@pytest.mark.parametrize(
    "units",
    [
        {"q_units": "g kg**-1"},  # was 17,070 % (g/kg read as kg/kg)
        {"q_units": "g/kg-unlabelled"},  # no attribute: values up to ~10 are g/kg
        {"q_units": "1"},  # CMIP's hus: kg/kg by value
        {"t_units": None, "q_units": None},  # K and kg/kg by value
        {"t_units": "degC"},  # was RH 0 and "channel r850 is constant"
        {"t_units": "celsius-unlabelled"},  # no attribute: -20..15 is degC, not K
        {"levels": (85000.0, 50000.0), "level_units": None},  # Pa without units: was 100x too large
        {"levels": (85000.0, 50000.0), "level_units": "Pa"},
    ],
)
def test_derived_inputs_are_converted_from_their_units(tmp_path, units):
    folder = humid_files(tmp_path / "raw", **units)
    sources = open_sources(load_recipe(humid_recipe(tmp_path, folder)))
    try:
        names = [c.name for c in sources.channels]
        assert names[-3:] == ["r850", "r500", "tcq"]
        assert [c.units for c in sources.channels[-3:]] == ["%", "%", "kg m**-2"]
        values = sources.read(0, 10)
    finally:
        sources.close()
    assert values[0, names.index("r850"), 0, 0] == pytest.approx(68.73, abs=0.005)
    np.testing.assert_allclose(
        values[:, names.index("r500")], derived.relative_humidity(KELVIN_T[:, 1], KG_Q[:, 1], 500.0), rtol=1e-9
    )
    # trapezoid between 850 and 500 hPa: (q850 + q500) / 2 * 35000 Pa / g, in kg m**-2
    np.testing.assert_allclose(
        values[:, names.index("tcq")], (KG_Q[:, 0] + KG_Q[:, 1]) / 2 * 35000 / derived.G, rtol=1e-9
    )


def test_a_store_from_degc_and_g_per_kg_holds_relative_humidity_in_percent(tmp_path):
    folder = humid_files(tmp_path / "raw", t_units="degC", q_units="g kg**-1")
    store = open_store(build(humid_recipe(tmp_path, folder), tmp_path / "humid.zarr", progress=False).path)
    i = store.channels.index("r850")
    assert store.to_xarray()["channel_units"].values[i] == "%"
    physical = np.asarray(store.array[:])[:, i].astype(np.float64) * store.stats["std"][i] + store.stats["mean"][i]
    np.testing.assert_allclose(physical, derived.relative_humidity(KELVIN_T[:, 0], KG_Q[:, 0], 850.0), rtol=1e-5)


@pytest.mark.parametrize(
    "units, expected",
    [
        ({"t_units": "degF"}, ["'t'", "t.nc", "'degF'", "K or degC"]),
        ({"q_units": "mol mol-1"}, ["'q'", "q.nc", "'mol mol-1'", "kg kg**-1 or g kg**-1"]),
        ({"levels": (1.0, 2.0), "level_units": "m"}, ["'t'", "t.nc", "pressure levels", "'m'"]),
    ],
)
def test_inputs_whose_units_are_not_certain_are_refused_naming_variable_file_and_units(tmp_path, units, expected):
    folder = humid_files(tmp_path / "raw", **units)
    with pytest.raises(SourceError) as err:
        open_sources(load_recipe(humid_recipe(tmp_path, folder)))
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_the_values_that_tell_unlabelled_units_are_read_one_step_of_one_level_at_a_time(tmp_path, monkeypatch):
    """8 steps x every kept level were read at once and copied to float64 (2.5 GB at ERA5's 0.25 degrees, 37
    levels): the least and greatest finite value, the same ones, come from one step of one level at a time."""
    from canonstore.preprocess.sources import Sources

    folder = humid_files(tmp_path / "raw", t_units=None, q_units=None)
    with xr.open_dataset(folder / "q.nc") as ds:
        q = ds.q.load()
    q[3, 1, 0, 0] = np.nan  # a missing value is no evidence
    q[5, 1, 1, 2] = 0.0213  # the greatest, at 500 hPa only
    q.to_dataset().to_netcdf(folder / "q.nc")
    shapes, read = [], Sources._read_variable

    def recorded(*args):
        values = read(*args)
        shapes.append(values.shape)
        return values

    sources = open_sources(load_recipe(humid_recipe(tmp_path, folder)))
    monkeypatch.setattr(Sources, "_read_variable", recorded)
    try:
        found = tuple(sources._derived_input("q").sample())
    finally:
        sources.close()
    steps = np.unique(np.linspace(0, 9, 8).astype(int))
    assert found == (float(np.nanmin(q[steps])), 0.0213)
    assert len(shapes) == steps.size * 2 and all(shape[:2] == (1, 1) for shape in shapes)


def test_unlabelled_humidity_above_500_hpa_is_refused_as_ambiguous(tmp_path):
    """At 300 and 250 hPa, q up to 0.05 could be kg/kg or a dry layer's g/kg: the values cannot tell."""
    folder = humid_files(tmp_path / "raw", q_units=None, levels=(300.0, 250.0))
    with pytest.raises(SourceError, match=r"'q' in .*q\.nc \(units ''\): values up to .* could be kg/kg or g/kg"):
        open_sources(load_recipe(humid_recipe(tmp_path, folder)))


def level_files(folder, **variables):
    """Each variable name=(values (steps, level, lat, lon) over 850 and 500 hPa, units or None) in its file."""
    folder.mkdir(exist_ok=True)
    coords = {
        "time": pd.date_range("2020-01-01", periods=10, freq="D"),
        "lat": [10.0, 0.0],
        "lon": [0.0, 1.0, 2.0],
        "level": ("level", [850.0, 500.0], {"units": "hPa"}),
    }
    for name, (values, units) in variables.items():
        attrs = {} if units is None else {"units": units}
        ds = xr.Dataset({name: (("time", "level", "lat", "lon"), values, attrs)}, coords=coords)
        ds.to_netcdf(folder / f"{name}.nc")
    return folder


def derived_values(tmp_path, folder, specs) -> dict:
    """{channel: (units, values (steps, lat, lon))} of the derived channels `specs` over the files in `folder`."""
    recipe = write_recipe(
        tmp_path, name="lv", sources=[str(folder / "*.nc")], derived=specs, splits={"by": "index", "train": [0, 9]}
    )
    sources = open_sources(load_recipe(recipe))
    try:
        values = sources.read(0, 10)
        return {
            c.name: (c.units, values[:, i])
            for i, c in enumerate(sources.channels)
            if c.variable in {s["name"] for s in specs}
        }
    finally:
        sources.close()


FRACTION = 0.5 + 0.1 * np.random.default_rng(2).random((10, 2, 2, 3))  # cloud cover, 0.5..0.6


def trapezoid(values):
    return (values[:, 0] + values[:, 1]) / 2 * 35000 / derived.G


@pytest.mark.parametrize(
    "units, expected_units, scale",
    [
        ("(0 - 1)", "kg m**-2", 1.0),  # ERA5 cc: was read as g/kg (above 0.05), 1000x too small
        ("1", "kg m**-2", 1.0),
        ("%", "(%) kg m**-2", 100.0),  # its own units, times the integration
    ],
)
def test_a_column_of_anything_but_a_humidity_keeps_its_values(tmp_path, units, expected_units, scale):
    folder = level_files(tmp_path / "raw", cc=(FRACTION * scale, units))
    found = derived_values(tmp_path, folder, [{"name": "tcc", "kind": "column", "variable": "cc"}])
    assert found["tcc"][0] == expected_units
    np.testing.assert_allclose(found["tcc"][1], trapezoid(FRACTION * scale), rtol=1e-9)


def test_a_column_without_units_is_integrated_only_for_a_specific_humidity(tmp_path):
    folder = level_files(tmp_path / "raw", cc=(FRACTION, None))
    with pytest.raises(
        SourceError,
        match=r"derived 'tcc' \(column\): 'cc' in .*cc\.nc \(units ''\): no units "
        r"attribute.*set its units attribute",
    ):
        derived_values(tmp_path, folder, [{"name": "tcc", "kind": "column", "variable": "cc"}])
    # a humidity under another name is one when the recipe takes it as relative humidity's input
    folder = level_files(tmp_path / "hum", t=(KELVIN_T, "K"), sh=(KG_Q * 1000, None))
    found = derived_values(
        tmp_path,
        folder,
        [
            {"name": "r", "kind": "relative_humidity", "temperature": "t", "specific_humidity": "sh"},
            {"name": "tcq", "kind": "column", "variable": "sh"},
        ],
    )
    assert found["tcq"][0] == "kg m**-2"
    np.testing.assert_allclose(found["tcq"][1], trapezoid(KG_Q), rtol=1e-9)


WIND = np.random.default_rng(3).normal(0, 10, (2, 10, 2, 2, 3))


@pytest.mark.parametrize("v_units, v_scale", [("m s-1", 1.0), ("m s**-1", 1.0), ("km h-1", 3.6)])
def test_wind_speed_of_u_and_v_in_one_unit_spelled_otherwise_or_scaled(tmp_path, v_units, v_scale):
    """u in `m/s` and v in `m s-1` were refused as different units."""
    folder = level_files(tmp_path / "raw", u=(WIND[0], "m/s"), v=(WIND[1] * v_scale, v_units))
    found = derived_values(tmp_path, folder, [{"name": "ws", "kind": "wind_speed", "u": "u", "v": "v"}])
    assert found["ws850"][0] == "m/s"
    np.testing.assert_allclose(found["ws850"][1], np.hypot(WIND[0, :, 0], WIND[1, :, 0]), rtol=1e-9)
