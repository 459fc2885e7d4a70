"""The units of a derived channel's inputs: from their attribute where it is certain, else told by their values.

The formulas take K, kg/kg and hPa. Every input is brought there from its own `units` (K or degC,
kg/kg or g/kg, levels in hPa or Pa; spellings and factors from `canonstore.units`); without a units
attribute (or with the ambiguous `1`) the values decide where the ranges cannot be confused (kg/kg
or g/kg: for a specific humidity only, never a cloud cover), else the build refuses naming variable,
file and units. A number in the wrong unit is never used as it is: 5 g/kg read as kg/kg is RH 17,070 %.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from canonstore.units import conversion, is_dimensionless, is_unknown, mass_ratio, temperature

# Values that only one unit can give: air temperature in K and in degC; specific humidity in kg/kg never
# exceeds ~0.04 (dew point 35 degC at 1000 hPa), while in g/kg it does wherever air is not frozen dry.
KELVIN_RANGE, CELSIUS_RANGE = (150.0, 350.0), (-100.0, 60.0)
MAX_KG_PER_KG = 0.05
MAX_G_PER_KG = 60.0
DEEPEST_FOR_RANGE = 500.0  # hPa: at or below it, q in g/kg exceeds MAX_KG_PER_KG somewhere in any field
# names of specific humidity (ERA5, CMIP, NCEP, GRIB, ICON): only its units are told by its values
HUMIDITY_NAMES = {"q", "hus", "shum", "spfh", "sphum", "qv", "specific_humidity"}


@dataclass(frozen=True)
class Input:
    """What derived channels need to know of one store variable."""

    variable: str
    units: str
    path: str  # the first file it is read from, for messages
    level_units: str | None  # 'hPa' when its levels are pressures, else the level's units
    sample: Callable[[], np.ndarray]  # physical values of a few steps, all kept levels, read on demand
    levels: tuple[float, ...] = ()  # its kept levels (hPa when level_units is 'hPa')
    standard_name: str = ""  # its CF standard_name, if any


def _unsure(units: str) -> bool:
    """No units, or a pure number (`1`): which unit the values are in, only they can tell."""
    return is_unknown(units) or is_dimensionless(units)


def is_specific_humidity(src: Input) -> bool:
    return src.standard_name == "specific_humidity" or src.variable.lower() in HUMIDITY_NAMES


def _describe(src: Input) -> str:
    return f"'{src.variable}' in {src.path} (units {src.units!r})"


def to_kelvin(src: Input) -> tuple[float, float]:
    """(scale, offset) taking `src`'s temperatures to K; ValueError naming it when no rule is certain."""
    scale = temperature(src.units)
    if scale in ("K", "degC"):  # the README's units for a temperature input (degF is refused, named)
        return conversion(scale, "K")
    if not _unsure(src.units):
        raise ValueError(
            f"{_describe(src)}: not a temperature unit canonstore converts (K or degC); "
            "convert it or set its units attribute"
        )
    lo, hi = _range(src)
    if KELVIN_RANGE[0] <= lo and hi <= KELVIN_RANGE[1]:
        return 1.0, 0.0
    if CELSIUS_RANGE[0] <= lo and hi <= CELSIUS_RANGE[1]:
        return 1.0, 273.15
    raise ValueError(
        f"{_describe(src)}: no temperature units, and values {lo:g}..{hi:g} fit neither K "
        f"{KELVIN_RANGE} nor degC {CELSIUS_RANGE}; set its units attribute to K or degC"
    )


def to_kg_per_kg(src: Input) -> float | None:
    """The factor taking `src`'s mass ratio to kg/kg; None for units that are no mass ratio at all.

    Without units (or `1`) the largest sampled value decides: above 0.05 only g/kg is possible; below,
    kg/kg when a level at or below 500 hPa is kept (where g/kg values would exceed 0.05), else unsure.
    """
    factor = mass_ratio(src.units)
    if factor is not None:
        return factor
    if not _unsure(src.units):
        return None
    lo, hi = _range(src)
    if hi > MAX_G_PER_KG:
        raise ValueError(
            f"{_describe(src)}: values {lo:g}..{hi:g} are no specific humidity in kg/kg or g/kg; "
            "set its units attribute"
        )
    if hi > MAX_KG_PER_KG:
        return 1e-3
    if not src.levels or max(src.levels) >= DEEPEST_FOR_RANGE:
        return 1.0
    raise ValueError(
        f"{_describe(src)}: values up to {hi:g} at {', '.join(f'{p:g}' for p in src.levels)} hPa "
        f"(all above {DEEPEST_FOR_RANGE:g} hPa) could be kg/kg or g/kg; set its units attribute to "
        "kg kg**-1 or g kg**-1"
    )


def _range(src: Input) -> tuple[float, float]:
    values = np.asarray(src.sample(), dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        raise ValueError(f"{_describe(src)}: no units attribute and no finite value to tell its units by")
    return float(values.min()), float(values.max())


def require_pressure_levels(src: Input) -> None:
    if src.level_units != "hPa":
        found = "have no coordinate" if src.level_units is None else f"are in {src.level_units!r}"
        raise ValueError(
            f"needs pressure levels, but the levels of {_describe(src)} {found}; give the level "
            "coordinate units of hPa or Pa"
        )


def pair_units(kind: str, first: Input, second: Input) -> tuple[tuple[tuple[float, float], ...], str]:
    """Relative humidity: T to K, q to kg/kg, pressure levels; wind speed: u and v in one unit, kept."""
    if kind == "relative_humidity":
        require_pressure_levels(first)
        require_pressure_levels(second)
        to_kg = to_kg_per_kg(second)
        if to_kg is None:
            raise ValueError(
                f"{_describe(second)}: not a specific humidity unit canonstore converts (kg kg**-1 or "
                "g kg**-1); convert it or set its units attribute"
            )
        return (to_kelvin(first), (to_kg, 0.0)), "%"
    v_to_u = conversion(second.units, first.units)  # `m/s` and `m s-1` are one unit; km/h converts
    if v_to_u is None:
        raise ValueError(f"{_describe(first)} and {_describe(second)} differ; convert one first")
    return ((1.0, 0.0), v_to_u), first.units


def column_units(kind: str, src: Input, humidity: bool) -> tuple[float, str]:
    """Column and layer mean: (scale of the input, output units). A column of a mass ratio (a specific
    humidity's units told by its values when missing) integrates to kg m**-2, of a pure number too;
    anything else keeps its units, times kg m**-2; without units only a specific humidity is integrated."""
    require_pressure_levels(src)
    if kind == "layer_mean":
        return 1.0, src.units
    to_kg = to_kg_per_kg(src) if humidity else mass_ratio(src.units)
    if to_kg is not None:
        return to_kg, "kg m**-2"
    if is_unknown(src.units):
        raise ValueError(
            f"{_describe(src)}: no units attribute, so the column's units are unknown (only a specific "
            "humidity's are told by its values); set its units attribute (`1` for a fraction)"
        )
    return 1.0, "kg m**-2" if is_dimensionless(src.units) else f"({src.units}) kg m**-2"
