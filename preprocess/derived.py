"""Derived channels: computed at build time from physical values, stored and normalised like any channel.

A recipe's `derived:` list names them (README, "Derived channels"):

    derived:
      - {name: r, kind: relative_humidity, temperature: t, specific_humidity: q}   # r850, r500, ... (%)
      - {name: ws, kind: wind_speed, u: u, v: v}                                   # ws850, ... or ws10 from u10/v10
      - {name: tcq, kind: column, variable: q}                                     # integral of q dp / g (kg m**-2)
      - {name: tmean, kind: layer_mean, variable: t, levels: [850, 500]}           # pressure-weighted mean

Each is computed per step from the channels the recipe keeps (so a level the recipe drops is not
used), in float64, and gets train statistics like any channel: the normalisation step that teams
otherwise add by hand for relative humidity.

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

from canonstore.units import G, conversion, is_dimensionless, is_unknown, mass_ratio, temperature

KINDS = {
    "relative_humidity": ("temperature", "specific_humidity"),
    "wind_speed": ("u", "v"),
    "column": ("variable",),
    "layer_mean": ("variable",),
}
EPSILON = 0.621981  # ratio of the gas constants of dry air and water vapour (ECMWF IFS value)

MAX_HPA = 1100.0  # no pressure level is deeper; larger values on a level axis without units are Pa
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


def saturation_vapour_pressure(t: np.ndarray) -> np.ndarray:
    """Over liquid water, hPa, from temperature in K (Bolton 1980; 0.1% from -35 to 35 degC)."""
    return 6.112 * np.exp(17.67 * (t - 273.15) / (t - 29.65))


def relative_humidity(t: np.ndarray, q: np.ndarray, p_hpa: float) -> np.ndarray:
    """Relative humidity in % from temperature (K), specific humidity (kg/kg) and pressure (hPa).

    The vapour pressure is e = q p / (EPSILON + (1 - EPSILON) q); values above 100 (supersaturation
    in the source) are kept, never clipped.
    """
    e = q * p_hpa / (EPSILON + (1 - EPSILON) * q)
    return 100.0 * e / saturation_vapour_pressure(t)


def wind_speed(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.hypot(u, v)


def column(values: np.ndarray, p_hpa: np.ndarray) -> np.ndarray:
    """Integral over pressure of `values` (steps, level, ...) divided by g: a mass per m**2 for a mixing
    ratio (trapezoids between the given levels; nothing is extrapolated beyond them)."""
    order = np.argsort(p_hpa)
    p = np.asarray(p_hpa, dtype=np.float64)[order] * 100.0
    x = values[:, order]
    widths = np.diff(p).reshape((1, -1) + (1,) * (values.ndim - 2))
    return (0.5 * (x[:, 1:] + x[:, :-1]) * widths).sum(axis=1) / G


def layer_mean(values: np.ndarray, p_hpa: np.ndarray) -> np.ndarray:
    """Pressure-weighted mean of `values` (steps, level, ...) between the highest and lowest level."""
    p = np.asarray(p_hpa, dtype=np.float64)
    return column(values, p) * G / ((p.max() - p.min()) * 100.0)


@dataclass(frozen=True)
class Derived:
    """One derived channel: `kind` applied to the store channels at positions `inputs`."""

    name: str  # the channel's name: `r850`, or `tcq` for a column
    variable: str  # the recipe's name for it: `r`
    kind: str
    inputs: tuple[int, ...]
    level: float | None
    units: str
    levels: tuple[float, ...] = ()  # column / layer_mean: the levels of `inputs`, hPa
    convert: tuple[tuple[float, float], ...] = ()  # per input: (scale, offset) to the formula's units

    def compute(self, fields: list[np.ndarray]) -> np.ndarray:
        """From the input channels' physical values (each (steps, *space)), float64."""
        if self.convert:
            fields = [f if (a, b) == (1.0, 0.0) else f * a + b for f, (a, b) in zip(fields, self.convert)]
        if self.kind == "relative_humidity":
            return relative_humidity(fields[0], fields[1], self.level)
        if self.kind == "wind_speed":
            return wind_speed(fields[0], fields[1])
        stacked = np.stack(fields, axis=1)
        return (column if self.kind == "column" else layer_mean)(stacked, np.array(self.levels))


def plan_derived(
    specs: list[dict], channels: list, channel_name, where: str, describe: Callable[[str], Input]
) -> list[Derived]:
    """The derived channels `specs` give over `channels` (the store's Channel list, variable + level).

    `channel_name(name, level)` names a per-level channel as sources do (`r850`); `describe(variable)`
    gives an input's units, file and sample values, to convert each input to the formula's units.
    Raises ValueError naming the spec when an input variable or the levels it needs are missing, or
    naming variable, file and units when an input's units cannot be converted with certainty.
    """
    out = []
    humidity_inputs = {spec.get("specific_humidity") for spec in specs if spec["kind"] == "relative_humidity"}
    by_variable: dict[str, dict] = {}
    for i, ch in enumerate(channels):
        by_variable.setdefault(ch.variable, {})[ch.level] = (i, ch)
    for spec in specs:
        name, kind = spec["name"], spec["kind"]
        inputs = [spec[key] for key in KINDS[kind]]
        missing = [v for v in inputs if v not in by_variable]
        if missing:
            raise ValueError(
                f"{where}: derived '{name}' ({kind}) needs variable(s) {missing}, which the store "
                f"does not keep; it has {sorted(by_variable)}"
            )
        if kind in ("relative_humidity", "wind_speed"):
            common = [lev for lev in by_variable[inputs[0]] if lev in by_variable[inputs[1]]]
            if not common:
                raise ValueError(
                    f"{where}: derived '{name}' ({kind}): '{inputs[0]}' and '{inputs[1]}' share no "
                    f"level ({sorted(map(str, by_variable[inputs[0]]))} vs "
                    f"{sorted(map(str, by_variable[inputs[1]]))})"
                )
            if kind == "relative_humidity" and None in common:
                raise ValueError(
                    f"{where}: derived '{name}': relative humidity needs pressure levels; "
                    f"'{inputs[0]}' and '{inputs[1]}' are surface fields"
                )
            try:
                convert, units = _pair_units(kind, describe(inputs[0]), describe(inputs[1]))
            except ValueError as exc:
                raise ValueError(f"{where}: derived '{name}' ({kind}): {exc}") from None
            for lev in common:
                out.append(
                    Derived(
                        name if lev is None else channel_name(name, lev),
                        name,
                        kind,
                        (by_variable[inputs[0]][lev][0], by_variable[inputs[1]][lev][0]),
                        lev,
                        units,
                        convert=convert,
                    )
                )
            continue
        have = by_variable[inputs[0]]
        levels = [lev for lev in have if lev is not None]
        wanted = [float(x) for x in spec.get("levels", levels)]
        absent = [lev for lev in wanted if lev not in have]
        if absent or len(wanted) < 2:
            raise ValueError(
                f"{where}: derived '{name}' ({kind}) needs at least two kept levels of "
                f"'{inputs[0]}'; asked for {wanted}, the store keeps {sorted(levels)}"
            )
        try:
            src = describe(inputs[0])
            scale, units = _level_units(kind, src, is_specific_humidity(src) or inputs[0] in humidity_inputs)
        except ValueError as exc:
            raise ValueError(f"{where}: derived '{name}' ({kind}): {exc}") from None
        out.append(
            Derived(
                name,
                name,
                kind,
                tuple(have[lev][0] for lev in wanted),
                None,
                units,
                tuple(wanted),
                convert=((scale, 0.0),) * len(wanted),
            )
        )
    return out


def _pair_units(kind: str, first: Input, second: Input) -> tuple[tuple[tuple[float, float], ...], str]:
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


def _level_units(kind: str, src: Input, humidity: bool) -> tuple[float, str]:
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
