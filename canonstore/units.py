"""Units: spellings read, and values converted only where the conversion is certain.

The one table for the whole package: `preprocess.derived_units` converts a derived channel's inputs with it,
`training.alignment` a forecast file's variables to the store's units.

    conversion("degC", "K")              # -> (1.0, 273.15): kelvin = degC * 1 + 273.15
    conversion("m", "m**2 s**-2")        # -> (9.80665, 0.0): geopotential height to geopotential
    conversion("hPa", "Pa")              # -> (100.0, 0.0)
    conversion("m s-1", "m/s")           # -> (1.0, 0.0): the same unit, spelled otherwise
    conversion("W m-2", "K")             # -> None: not the same quantity
    conversion("g kg-1", "")             # -> None: '' is "no units given", unknown, never dimensionless

Units are read as products of known symbols (SI prefixes allowed) with integer powers, in the
spellings of CF/UDUNITS, ERA5 and CMIP files (`m**2 s**-2`, `m2 s-2`, `m^2/s^2`, `kg m-2 s-1`). A
symbol outside the table makes the conversion uncertain (None), unless both strings are the same.
"""

from __future__ import annotations

import re

G = 9.80665  # standard gravity (WMO, CODATA), m s-2: geopotential = G x geopotential height

# symbol: (factor to the base unit, base unit); the bases need not be SI, only consistent
_SYMBOLS = {
    "m": (1.0, "m"),
    "dam": (10.0, "m"),
    "s": (1.0, "s"),
    "min": (60.0, "s"),
    "h": (3600.0, "s"),
    "hr": (3600.0, "s"),
    "d": (86400.0, "s"),
    "kg": (1.0, "kg"),
    "g": (1e-3, "kg"),
    "Pa": (1.0, "Pa"),
    "mb": (100.0, "Pa"),
    "bar": (1e5, "Pa"),
    "K": (1.0, "K"),
    "W": (1.0, "W"),
    "J": (1.0, "J"),
    "N": (1.0, "N"),
    "%": (1e-2, ""),
    "1": (1.0, ""),
    "deg": (1.0, "deg"),
}
# words, read in any case
_WORDS = {
    "metre": "m",
    "metres": "m",
    "meter": "m",
    "meters": "m",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "minute": "min",
    "minutes": "min",
    "mins": "min",
    "hour": "h",
    "hours": "h",
    "hrs": "h",
    "day": "d",
    "days": "d",
    "pa": "Pa",
    "pascal": "Pa",
    "pascals": "Pa",
    "hpa": "hPa",
    "hectopascal": "hPa",
    "hectopascals": "hPa",
    "mbar": "mbar",
    "mbars": "mbar",
    "millibar": "mbar",
    "millibars": "mbar",
    "kelvin": "K",
    "percent": "%",
    "degree": "deg",
    "degrees": "deg",
}
_PREFIXES = {
    "p": 1e-12,
    "n": 1e-9,
    "u": 1e-6,
    "µ": 1e-6,
    "m": 1e-3,
    "c": 1e-2,
    "d": 1e-1,
    "da": 10.0,
    "h": 1e2,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
}
_PREFIXABLE = ("m", "s", "g", "Pa", "bar", "K", "W", "J", "N")
# whole strings (compared by `key`) that name a pure number: ERA5 writes "(0 - 1)", CMIP "1"
_DIMENSIONLESS = {"1", "(0-1)", "0-1", "fraction", "dimensionless", "-"}
# no units given: unknown, so nothing converts to or from them (but they equal themselves)
_UNKNOWN = {"", "none"}
# absolute temperatures (compared by `key`): only a bare temperature is shifted, never a compound unit
# (a rate in degC s-1 is not offset by 273.15)
_TEMPERATURES = {
    "K": {
        "k",
        "kelvin",
        "kelvins",
        "degk",
        "deg_k",
        "degreek",
        "degreesk",
        "degree_k",
        "degrees_k",
        "degree_kelvin",
        "degrees_kelvin",
    },
    "degC": {
        "degc",
        "deg_c",
        "°c",
        "℃",
        "degreec",
        "degreesc",
        "degree_c",
        "degrees_c",
        "celsius",
        "degree_celsius",
        "degrees_celsius",
    },
    "degF": {
        "degf",
        "deg_f",
        "°f",
        "degreef",
        "degreesf",
        "degree_f",
        "degrees_f",
        "fahrenheit",
        "degree_fahrenheit",
        "degrees_fahrenheit",
    },
}
_TO_KELVIN = {"K": (1.0, 0.0), "degC": (1.0, 273.15), "degF": (5 / 9, 273.15 - 32 * 5 / 9)}
# geopotential height, spelled as a length
_ALIASES = {
    "gpm": "m",
    "gpdam": "dam",
    "geopotentialmetres": "m",
    "geopotentialmeters": "m",
    "geopotential_metres": "m",
}
_TOKEN = re.compile(r"^([A-Za-z_%°µ]+|1)([-+]?\d+)?$")  # a symbol and its power, once ** and ^ are gone
_LENGTH, _GEOPOTENTIAL = frozenset({("m", 1)}), frozenset({("m", 2), ("s", -2)})


def key(units) -> str:
    """`units` as compared whole: lower case, without spaces, `**` or `^` (`g kg**-1` -> `gkg-1`)."""
    return "".join(str(units).split()).lower().replace("**", "").replace("^", "")


def is_unknown(units) -> bool:
    """No units given (an empty or `none` attribute): not dimensionless, unknown."""
    return key(units) in _UNKNOWN


def is_dimensionless(units) -> bool:
    """Spelled as a pure number (`1`, `(0 - 1)`, `fraction`); `%` and `kg kg-1` are not spelled so."""
    return key(units) in _DIMENSIONLESS


def temperature(units) -> str | None:
    """'K', 'degC' or 'degF' when `units` is a bare absolute temperature in one of their spellings."""
    k = key(units)
    return next((name for name, spellings in _TEMPERATURES.items() if k in spellings), None)


def _symbol(name: str) -> tuple[float, str] | None:
    """(factor, base) of one symbol: the table, then words in any case, then an SI prefix of a symbol."""
    if name in _SYMBOLS:
        return _SYMBOLS[name]
    if name.lower() in _WORDS:
        name = _WORDS[name.lower()]
        if name in _SYMBOLS:
            return _SYMBOLS[name]
    for prefix, scale in sorted(_PREFIXES.items(), key=lambda p: -len(p[0])):
        rest = name[len(prefix) :]
        if name.startswith(prefix) and rest in _PREFIXABLE:
            factor, base = _SYMBOLS[rest]
            return scale * factor, base
    return None


def _terms(units) -> list[tuple[float, str, int]] | None:
    """(factor, base, power) of each symbol of `units`, or None when one is not known."""
    text = " ".join(str(units).split())
    text = _ALIASES.get(key(text), text)
    terms = []
    for part_number, part in enumerate(text.replace("**", "").replace("^", "").split("/")):
        for token in re.split(r"[ *.·]+", part.strip()) if part.strip() else []:
            match = _TOKEN.match(token)
            found = _symbol(match.group(1)) if match else None
            if found is None:
                return None
            terms.append((found[0], found[1], int(match.group(2) or 1) * (-1 if part_number else 1)))
    return terms


def parse(units) -> tuple[float, frozenset] | None:
    """(factor, {(base, power)}) of `units`, or None when a symbol is not known or no units are given."""
    if is_unknown(units):
        return None
    if is_dimensionless(units):
        return 1.0, frozenset()
    terms = _terms(units)
    if terms is None:
        return None
    factor, powers = 1.0, {}
    for scale, base, power in terms:
        factor *= scale**power
        if base:
            powers[base] = powers.get(base, 0) + power
    return factor, frozenset((b, p) for b, p in powers.items() if p)


def conversion(theirs, ours) -> tuple[float, float] | None:
    """(scale, offset) such that a value in `ours` = value in `theirs` * scale + offset; None when
    the two are not certainly the same quantity."""
    a, b = " ".join(str(theirs).split()), " ".join(str(ours).split())
    if a == b:
        return 1.0, 0.0
    ta, tb = temperature(a), temperature(b)
    if ta and tb:
        (fa, oa), (fb, ob) = _TO_KELVIN[ta], _TO_KELVIN[tb]
        return fa / fb, (oa - ob) / fb
    pa, pb = parse(a), parse(b)
    if pa is None or pb is None:
        return None
    if pa[1] == pb[1]:
        return pa[0] / pb[0], 0.0
    if (pa[1], pb[1]) == (_LENGTH, _GEOPOTENTIAL):  # geopotential height -> geopotential, through g
        return pa[0] * G / pb[0], 0.0
    if (pa[1], pb[1]) == (_GEOPOTENTIAL, _LENGTH):
        return pa[0] / (G * pb[0]), 0.0
    return None


def mass_ratio(units) -> float | None:
    """The factor to kg/kg of a unit spelled as mass per mass (`kg kg**-1`, `g/kg`, `mg kg-1`), else None
    (`1` and `(0 - 1)` are numbers, not spelled as a mass ratio: see `is_dimensionless`)."""
    terms = None if is_unknown(units) or is_dimensionless(units) else _terms(units)
    if not terms or any(base != "kg" for _, base, _ in terms) or sum(power for *_, power in terms):
        return None
    return parse(units)[0]


def scale_to(units, target: str) -> float | None:
    """The factor taking `units` to `target` when both are the same quantity without an offset (a
    pressure to hPa, a duration to seconds), else None."""
    found = conversion(units, target) if parse(units) is not None else None
    return found[0] if found is not None and found[1] == 0.0 else None
