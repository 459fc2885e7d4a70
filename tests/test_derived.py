"""Derived channels: the formulas against hand computations, and channels built like any other."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from canonstore import open_store
from canonstore.errors import RecipeError, SourceError
from canonstore.preprocess import build, derived, load_recipe, open_sources
from tests.conftest import demo_recipe, write_recipe

DEMO_DERIVED = [{"name": "r", "kind": "relative_humidity", "temperature": "t", "specific_humidity": "q"},
                {"name": "ws", "kind": "wind_speed", "u": "u", "v": "v"},
                {"name": "tcq", "kind": "column", "variable": "q"},
                {"name": "tmean", "kind": "layer_mean", "variable": "t", "levels": [850, 500]}]


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
    values = np.full((1, 3, 2), 0.005)                         # 5 g/kg at 1000, 850 and 500 hPa
    p = np.array([850.0, 1000.0, 500.0])                       # any order
    assert derived.column(values, p) == pytest.approx(0.005 * 50000 / 9.80665)   # kg m**-2
    linear = np.array([300.0, 285.0, 250.0])[None, :, None] * np.ones((1, 3, 2))  # t at 1000, 850, 500 hPa
    # trapezoids: (300+285)/2 * 150 + (285+250)/2 * 350, over 500 hPa
    assert derived.layer_mean(linear, np.array([1000.0, 850.0, 500.0])) == pytest.approx(
        ((300 + 285) / 2 * 150 + (285 + 250) / 2 * 350) / 500)


def test_derived_channels_are_stored_with_train_statistics(tmp_path, tiny_raw):
    out = tmp_path / "derived.zarr"
    build(demo_recipe(tmp_path, tiny_raw, derived=DEMO_DERIVED), out, progress=False, log=lambda *_: None)
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
    assert 20 < rh.mean() < 80 and 0 < rh.min() and rh.max() < 110  # the demo's humidity is plausible


def test_a_derived_channel_needing_what_the_recipe_drops_is_refused(tmp_path, tiny_raw):
    spec = [{"name": "r", "kind": "relative_humidity", "temperature": "t", "specific_humidity": "q"}]
    recipe = demo_recipe(tmp_path, tiny_raw, derived=spec, variables=["t", "z"])
    with pytest.raises(SourceError, match=r"derived 'r' \(relative_humidity\) needs variable\(s\) \['q'\]"):
        open_sources(load_recipe(recipe))
    with pytest.raises(RecipeError, match="missing \\['specific_humidity'\\]"):
        load_recipe(write_recipe(tmp_path, name="x", sources=[str(tiny_raw / "*.nc")], splits={"train": [2000, 2000]},
                                 derived=[{"name": "r", "kind": "relative_humidity", "temperature": "t"}]))
    spec = [{"name": "tcq", "kind": "column", "variable": "q"}]
    with pytest.raises(SourceError, match="at least two kept levels"):
        open_sources(load_recipe(demo_recipe(tmp_path, tiny_raw, derived=spec, levels={"q": [500]})))
