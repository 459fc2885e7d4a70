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

The formulas take K, kg/kg and hPa; `derived_units` brings every input there from its own units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from canonstore.preprocess.derived_units import Input, column_units, is_specific_humidity, pair_units
from canonstore.units import G

KINDS = {
    "relative_humidity": ("temperature", "specific_humidity"),
    "wind_speed": ("u", "v"),
    "column": ("variable",),
    "layer_mean": ("variable",),
}
EPSILON = 0.621981  # ratio of the gas constants of dry air and water vapour (ECMWF IFS value)


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

    `channel_name(name, level)` names a per-level channel as `channels` does (`r850`); `describe(variable)`
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
                convert, units = pair_units(kind, describe(inputs[0]), describe(inputs[1]))
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
            scale, units = column_units(kind, src, is_specific_humidity(src) or inputs[0] in humidity_inputs)
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
