"""Unit conversions, one table for derived channels and forecast files: certain ones only, None for anything else."""

import pytest

from canonstore.units import G, conversion, is_dimensionless, is_unknown, mass_ratio, scale_to, temperature


@pytest.mark.parametrize(
    "theirs, ours, expected",
    [
        ("K", "K", (1.0, 0.0)),
        ("degC", "K", (1.0, 273.15)),
        ("K", "degC", (1.0, -273.15)),
        ("Celsius", "K", (1.0, 273.15)),
        ("degF", "K", (5 / 9, 273.15 - 160 / 9)),
        ("m", "m**2 s**-2", (G, 0.0)),
        ("gpm", "m2 s-2", (G, 0.0)),
        ("m**2 s**-2", "m", (1 / G, 0.0)),
        ("dam", "m**2 s**-2", (10 * G, 0.0)),
        ("hPa", "Pa", (100.0, 0.0)),
        ("Pa", "millibars", (0.01, 0.0)),
        ("m/s", "m s**-1", (1.0, 0.0)),
        ("m s-1", "km h-1", (3.6, 0.0)),
        ("kg/m2/s", "kg m**-2 s**-1", (1.0, 0.0)),
        ("g kg-1", "kg kg**-1", (1e-3, 0.0)),
        ("%", "1", (0.01, 0.0)),
        ("(0 - 1)", "1", (1.0, 0.0)),
        ("(0 - 1)", "(0 - 1)", (1.0, 0.0)),
        ("mm", "m", (1e-3, 0.0)),
    ],
)
def test_certain_conversions(theirs, ours, expected):
    assert conversion(theirs, ours) == pytest.approx(expected)


@pytest.mark.parametrize(
    "theirs, ours, expected",
    [
        # CF/UDUNITS spellings that derived channels accepted and `score` refused
        ("degree_C", "K", (1.0, 273.15)),
        ("degrees_C", "K", (1.0, 273.15)),
        ("degree_K", "K", (1.0, 0.0)),
        ("degrees C", "degC", (1.0, 0.0)),
        ("K", "degrees_Celsius", (1.0, -273.15)),
        # SI prefixes and words in any case
        ("kPa", "hPa", (10.0, 0.0)),
        ("hectopascals", "Pa", (100.0, 0.0)),
        ("HPA", "mbar", (1.0, 0.0)),
        ("mg kg-1", "g/kg", (1e-3, 0.0)),
        ("ms", "s", (1e-3, 0.0)),
        ("hours", "s", (3600.0, 0.0)),
        ("days", "h", (24.0, 0.0)),
    ],
)
def test_spellings_that_both_tables_knew_convert(theirs, ours, expected):
    assert conversion(theirs, ours) == pytest.approx(expected)


@pytest.mark.parametrize(
    "theirs, ours",
    [
        ("W m-2", "K"),
        ("kg m-2", "mm"),  # precipitation: a density would be needed
        ("degC s-1", "K"),
        ("degC", "K s-1"),  # a rate is never shifted by 273.15
        ("m", "m s-1"),
        ("furlong", "m"),
        ("C", "K"),  # unknown symbols: C is a coulomb as much as a degree
        ("hours since 2000-01-01", "s"),  # a time, not a duration
    ],
)
def test_uncertain_conversions_are_none(theirs, ours):
    assert conversion(theirs, ours) is None


@pytest.mark.parametrize("theirs, ours", [("g kg-1", ""), ("%", ""), ("", "1"), ("(0 - 1)", ""), ("K", "none")])
def test_no_units_are_unknown_never_dimensionless(theirs, ours):
    """A store channel built from a file without `units` holds values in units nobody said: g/kg, %,
    a fraction; converting `g kg-1` to it by 1e-3 was a silent factor 1000."""
    assert conversion(theirs, ours) is None
    assert is_unknown("") and is_unknown(" None ") and not is_dimensionless("")
    assert conversion("", "") == (1.0, 0.0)  # the same (unknown) units: values as they are


def test_what_derived_channels_ask():
    assert [temperature(u) for u in ("K", "degree_C", "deg F", "K s-1", "C")] == ["K", "degC", "degF", None, None]
    assert [mass_ratio(u) for u in ("kg kg**-1", "g/kg", "g kg-1", "1", "(0 - 1)", "", "kg", "kg m-2")] == [
        1.0,
        1e-3,
        1e-3,
        None,
        None,
        None,
        None,
        None,
    ]
    assert [scale_to(u, "hPa") for u in ("Pa", "mbar", "millibars", "m", "")] == [0.01, 1.0, 1.0, None, None]
