"""Converting values between unit strings, only where the conversion is certain.

    conversion("degC", "K")              # -> (1.0, 273.15): kelvin = degC * 1 + 273.15
    conversion("m", "m**2 s**-2")        # -> (9.80665, 0.0): geopotential height to geopotential
    conversion("hPa", "Pa")              # -> (100.0, 0.0)
    conversion("m s-1", "m/s")           # -> (1.0, 0.0): the same unit, spelled otherwise
    conversion("W m-2", "K")             # -> None: not the same quantity

Units are read as products of known symbols with integer powers, in the spellings of CF/UDUNITS,
ERA5 and CMIP files (`m**2 s**-2`, `m2 s-2`, `m^2/s^2`, `kg m-2 s-1`). A symbol outside the table
makes the conversion uncertain (None), unless both strings are the same.
"""

from __future__ import annotations

import re

G = 9.80665  # standard gravity (WMO, CODATA), m s-2: geopotential = G x geopotential height

# symbol: (factor to the base unit, base unit); the bases need not be SI, only consistent
_SYMBOLS = {
    "m": (1.0, "m"), "metre": (1.0, "m"), "metres": (1.0, "m"), "meter": (1.0, "m"), "meters": (1.0, "m"),
    "km": (1e3, "m"), "dam": (10.0, "m"), "cm": (1e-2, "m"), "mm": (1e-3, "m"),
    "s": (1.0, "s"), "sec": (1.0, "s"), "second": (1.0, "s"), "seconds": (1.0, "s"), "min": (60.0, "s"),
    "h": (3600.0, "s"), "hr": (3600.0, "s"), "hour": (3600.0, "s"), "hours": (3600.0, "s"),
    "d": (86400.0, "s"), "day": (86400.0, "s"), "days": (86400.0, "s"),
    "kg": (1.0, "kg"), "g": (1e-3, "kg"),
    "Pa": (1.0, "Pa"), "hPa": (100.0, "Pa"), "kPa": (1e3, "Pa"), "mb": (100.0, "Pa"), "mbar": (100.0, "Pa"),
    "millibar": (100.0, "Pa"), "millibars": (100.0, "Pa"), "bar": (1e5, "Pa"),
    "K": (1.0, "K"), "W": (1.0, "W"), "J": (1.0, "J"), "N": (1.0, "N"),
    "%": (1e-2, ""), "percent": (1e-2, ""), "1": (1.0, ""),
    "degree": (1.0, "deg"), "degrees": (1.0, "deg"), "deg": (1.0, "deg"),
}
# whole strings that name a dimensionless fraction (ERA5 writes "(0 - 1)")
_DIMENSIONLESS = {"", "1", "(0 - 1)", "(0-1)", "0-1", "fraction", "dimensionless", "-"}
# absolute temperatures: (factor, offset) to kelvin; only a bare temperature is shifted, never a
# compound unit (a rate in degC s-1 is not offset by 273.15)
_KELVIN, _CELSIUS, _FAHRENHEIT = (1.0, 0.0), (1.0, 273.15), (5 / 9, 273.15 - 32 * 5 / 9)
_TEMPERATURE = {"k": _KELVIN, "kelvin": _KELVIN, "degk": _KELVIN, "deg_k": _KELVIN, "degrees_k": _KELVIN,
                "degc": _CELSIUS, "deg_c": _CELSIUS, "°c": _CELSIUS, "celsius": _CELSIUS,
                "degree_celsius": _CELSIUS, "degrees_celsius": _CELSIUS,
                "degf": _FAHRENHEIT, "deg_f": _FAHRENHEIT, "°f": _FAHRENHEIT, "fahrenheit": _FAHRENHEIT,
                "degrees_fahrenheit": _FAHRENHEIT}
# geopotential height, spelled as a length
_ALIASES = {"gpm": "m", "gpdam": "dam", "geopotential metres": "m", "geopotential meters": "m",
            "geopotential_metres": "m"}
_TOKEN = re.compile(r"^([A-Za-z_%°]+|1)([-+]?\d+)?$")  # a symbol and its power, once ** and ^ are gone


def _spelling(units: str) -> str:
    return " ".join(str(units).split())


def parse(units: str) -> tuple[float, frozenset] | None:
    """(factor, {(base, power)}) of `units`, or None when a symbol is not known."""
    text = _spelling(units)
    if text.lower() in _DIMENSIONLESS:
        return 1.0, frozenset()
    factor, powers = 1.0, {}
    for part_number, part in enumerate(text.replace("**", "").replace("^", "").split("/")):
        for token in re.split(r"[ *.·]+", part.strip()) if part.strip() else []:
            match = _TOKEN.match(token)
            if not match or match.group(1) not in _SYMBOLS:
                return None
            scale, base = _SYMBOLS[match.group(1)]
            power = int(match.group(2) or 1) * (-1 if part_number else 1)
            factor *= scale ** power
            if base:
                powers[base] = powers.get(base, 0) + power
    return factor, frozenset((b, p) for b, p in powers.items() if p)


def conversion(theirs: str, ours: str) -> tuple[float, float] | None:
    """(scale, offset) such that a value in `ours` = value in `theirs` * scale + offset; None when
    the two are not certainly the same quantity."""
    a, b = _spelling(theirs), _spelling(ours)
    if a == b:
        return 1.0, 0.0
    if a.lower() in _TEMPERATURE and b.lower() in _TEMPERATURE:
        (fa, oa), (fb, ob) = _TEMPERATURE[a.lower()], _TEMPERATURE[b.lower()]
        return fa / fb, (oa - ob) / fb
    pa, pb = parse(_ALIASES.get(a.lower(), a)), parse(_ALIASES.get(b.lower(), b))
    if pa is None or pb is None:
        return None
    if pa[1] == pb[1]:
        return pa[0] / pb[0], 0.0
    length, geopotential = frozenset({("m", 1)}), frozenset({("m", 2), ("s", -2)})
    if (pa[1], pb[1]) == (length, geopotential):   # geopotential height -> geopotential, through g
        return pa[0] * G / pb[0], 0.0
    if (pa[1], pb[1]) == (geopotential, length):
        return pa[0] / (G * pb[0]), 0.0
    return None
