"""Unit conversions for forecast files: certain ones only, None for anything else."""

import pytest

from canonstore.training.units import G, conversion


@pytest.mark.parametrize("theirs, ours, expected", [
    ("K", "K", (1.0, 0.0)),
    ("degC", "K", (1.0, 273.15)), ("K", "degC", (1.0, -273.15)), ("Celsius", "K", (1.0, 273.15)),
    ("degF", "K", (5 / 9, 273.15 - 160 / 9)),
    ("m", "m**2 s**-2", (G, 0.0)), ("gpm", "m2 s-2", (G, 0.0)), ("m**2 s**-2", "m", (1 / G, 0.0)),
    ("dam", "m**2 s**-2", (10 * G, 0.0)),
    ("hPa", "Pa", (100.0, 0.0)), ("Pa", "millibars", (0.01, 0.0)),
    ("m/s", "m s**-1", (1.0, 0.0)), ("m s-1", "km h-1", (3.6, 0.0)), ("kg/m2/s", "kg m**-2 s**-1", (1.0, 0.0)),
    ("g kg-1", "kg kg**-1", (1e-3, 0.0)), ("%", "1", (0.01, 0.0)), ("(0 - 1)", "1", (1.0, 0.0)),
    ("(0 - 1)", "(0 - 1)", (1.0, 0.0)), ("mm", "m", (1e-3, 0.0)),
])
def test_certain_conversions(theirs, ours, expected):
    assert conversion(theirs, ours) == pytest.approx(expected)


@pytest.mark.parametrize("theirs, ours", [
    ("W m-2", "K"), ("kg m-2", "mm"),        # precipitation: a density would be needed
    ("degC s-1", "K"), ("degC", "K s-1"),    # a rate is never shifted by 273.15
    ("m", "m s-1"), ("furlong", "m"), ("C", "K"),   # unknown symbols: C is a coulomb as much as a degree
])
def test_uncertain_conversions_are_none(theirs, ours):
    assert conversion(theirs, ours) is None
