"""The store's channels: which variables, their levels (in hPa), names and units, then the derived channels.

A variable gives one channel per kept level (`z` at 500 hPa -> `z500`), one named by its scalar level
coordinate, one per label of a `channel` dimension (NWB electrodes), or one channel of its own name. Channels
are named from the variable's short name (`canonstore.names`: `geopotential` at 500 hPa -> `z500`, as `z`
would be) or the recipe's `rename:`; names not in the table stay as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from canonstore.errors import SourceError
from canonstore.names import short_name
from canonstore.preprocess.derived import Derived, plan_derived
from canonstore.preprocess.derived_units import Input
from canonstore.preprocess.recipe import Recipe
from canonstore.preprocess.timeaxis import Segment
from canonstore.units import scale_to

CHANNEL_DIMS = ("channel",)  # a dimension whose labels are the channels' names (see _labelled_channels)
LEVEL_DIMS = ("level", "lev", "plev", "pressure_level", "pressure", "isobaricInhPa")
MAX_HPA = 1100.0  # no pressure level is deeper; larger values on a level axis without units are Pa


@dataclass(frozen=True)
class Channel:
    """One store channel: a variable at one level (or a surface variable)."""

    name: str
    variable: str
    level: float | None
    units: str


@dataclass(frozen=True)
class Selection:
    """The recipe's variables among the sources, and what the sources hold that the store leaves out."""

    files_of: dict[str, list[tuple[Path, xr.Dataset]]]  # each selected variable (in order): the parts holding it
    ignored: list[str]  # data variables neither in `variables` nor in `static`
    unused_files: list[dict]  # {"path", "variables"} of the files that contribute nothing


def select_variables(parts: list[tuple[Path, xr.Dataset]], recipe: Recipe, time_dim: str) -> Selection:
    """The recipe's `variables` (default every data variable along `time_dim`), each checked to be there."""
    files = list(recipe.sources)
    present: dict[str, list[tuple[Path, xr.Dataset]]] = {}
    for path, ds in parts:
        for name, var in ds.data_vars.items():
            if time_dim in var.dims:
                present.setdefault(name, []).append((path, ds))
    wanted = list(recipe.variables) if recipe.variables else sorted(present)
    if not wanted:
        raise SourceError(
            f"no data variable with a '{time_dim}' dimension in {[str(p) for p in files]}; "
            "name the variables (and `time_dim`) in the recipe"
        )
    everywhere = {name for _, ds in parts for name in ds.variables}
    for name in wanted:
        if name not in everywhere:
            raise SourceError(
                f"variable '{name}' (recipe 'variables') is in none of the sources; found "
                f"{sorted(present)} in {[str(p) for p in files]}"
            )
        if name not in present:
            raise SourceError(
                f"variable '{name}' (recipe 'variables') has no '{time_dim}' dimension in any source; "
                f"found {sorted(present)} in {[str(p) for p in files]}"
            )
    for key, names in (("levels", recipe.levels), ("rename", recipe.rename)):
        for name in names:
            if name not in wanted:
                raise SourceError(
                    f"recipe {recipe.path}: '{key}' names '{name}', which is not a selected variable {wanted}"
                )
    # Nothing is dropped silently: the build reports what the recipe leaves out, and which files
    # the globs matched without contributing anything (with what they hold instead).
    every = {name for _, ds in parts for name in ds.data_vars}
    used = set(wanted) | set(recipe.static)
    held: dict[Path, set[str]] = {p: set() for p in files}
    for path, ds in parts:
        held[path] |= set(map(str, ds.data_vars))
    return Selection(
        {name: present[name] for name in wanted},
        sorted(every - set(wanted) - set(recipe.static)),
        [{"path": str(path), "variables": sorted(names)} for path, names in held.items() if not used & names],
    )


def make_channels(
    segments: dict[str, list[Segment]], recipe: Recipe, time_dim: str, space_dims: tuple[str, ...]
) -> tuple[list[Channel], dict[str, np.ndarray | None], dict[str, list[Segment]]]:
    """(channels, each variable's kept positions on its level or channel dimension (None: it has none),
    the segments with that dimension moved right after time, where `Sources.read` slices it)."""
    segments = dict(segments)
    channels, level_index = [], {}
    for name in segments:
        array = segments[name][0].array
        units = _units(name, segments[name])
        stem = short_name(name, recipe.rename)
        level_dims = [d for d in array.dims if d in LEVEL_DIMS + CHANNEL_DIMS]
        if not level_dims:
            if name in recipe.levels:
                raise SourceError(
                    f"recipe 'levels' selects levels of '{name}', but it has no level dimension "
                    f"in {segments[name][0].path}"
                )
            level = _scalar_level(name, segments[name])
            # the grid in the store's order, whatever the source's (WB2 may put longitude first)
            segments[name] = [
                dataclasses.replace(s, array=s.array.transpose(time_dim, *space_dims)) for s in segments[name]
            ]
            channels.append(Channel(stem if level is None else channel_name(stem, level), name, level, units))
            level_index[name] = None
            continue
        ldim = level_dims[0]
        segments[name] = [
            dataclasses.replace(s, array=s.array.transpose(time_dim, ldim, *space_dims)) for s in segments[name]
        ]
        if ldim in CHANNEL_DIMS:
            channels += _labelled_channels(name, segments[name], ldim, units, recipe)
            level_index[name] = np.arange(array.sizes[ldim])
            continue
        first = segments[name][0]
        values = levels_in_hpa(array[ldim])
        for seg in segments[name][1:]:
            if not np.array_equal(levels_in_hpa(seg.array[ldim]), values):
                raise SourceError(
                    f"{seg.path}: variable '{name}' has levels {list(levels_in_hpa(seg.array[ldim]))}, "
                    f"but {first.path} has {list(values)}"
                )
        idx = []
        for lev in recipe.levels.get(name, list(values)):
            hit = np.flatnonzero(np.isclose(values, lev))
            if not hit.size:
                raise SourceError(
                    f"variable '{name}' has no level {lev:g} (recipe 'levels'); "
                    f"available in {first.path}: {[float(v) for v in values]}"
                )
            idx.append(int(hit[0]))
            channels.append(Channel(channel_name(stem, values[hit[0]]), name, float(values[hit[0]]), units))
        level_index[name] = np.array(idx)
    _refuse_clashes(channels)
    return channels, level_index, segments


def _refuse_clashes(channels: list[Channel]) -> None:
    names = [c.name for c in channels]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        who = "; ".join(
            f"{c.name} = '{c.variable}'" + ("" if c.level is None else f" at {c.level:g} hPa")
            for c in channels
            if c.name in clash
        )
        raise SourceError(f"two channels would have the same name ({who}); name them apart with the recipe's `rename:`")


def channel_name(variable: str, level: float) -> str:
    """`z` at 500 hPa -> `z500`; a variable ending in a digit gets a separator: `o3` at 1 hPa -> `o3_1`
    (never `o31`, which reads as o3 at 1 or o31 at nothing). 2.5 hPa -> `2p5`."""
    text = str(int(level)) if float(level).is_integer() else f"{level:g}".replace(".", "p")
    return f"{variable}_{text}" if variable[-1:].isdigit() else f"{variable}{text}"


def levels_in_hpa(coord: xr.DataArray) -> np.ndarray:
    """Levels in hPa: by the units attribute, else by value (no pressure level is deeper than 1100 hPa)."""
    values = np.asarray(coord.values, dtype=np.float64)
    units = str(coord.attrs.get("units", ""))
    if not units.strip():
        return values / 100.0 if values.size > 0 and np.nanmax(values) > MAX_HPA else values
    to_hpa = scale_to(units, "hPa")
    if to_hpa is None:  # not a pressure: the caller refuses it where pressure is needed
        return values
    # Pa: divide by 100, never multiply by 0.01 (35 Pa * 0.01 is not 0.35), as levels are matched by value
    return values * to_hpa if to_hpa >= 1 else values / scale_to("hPa", units)


def level_units(coord: xr.DataArray) -> str:
    """'hPa' for a pressure axis (`levels_in_hpa` gives hPa: units hPa, mbar or Pa, or none), else its units."""
    units = str(coord.attrs.get("units", ""))
    return "hPa" if not units.strip() or scale_to(units, "hPa") or coord.name == "isobaricInhPa" else units


def _scalar_level(name: str, segments: list[Segment]) -> float | None:
    """The level of a variable stored at one level as a scalar coordinate (a GRIB file of t at
    500 hPa, a NetCDF `plev` of size 0-d), the same in every file; None for a surface variable."""

    def level_of(seg):
        found = [c for c in LEVEL_DIMS if c in seg.array.coords and seg.array[c].ndim == 0]
        return None if not found else float(levels_in_hpa(seg.array[found[0]]))

    first = segments[0]
    level = level_of(first)
    for seg in segments[1:]:
        if level_of(seg) != level:
            raise SourceError(
                f"{seg.path}: variable '{name}' is at level {level_of(seg)}, but {first.path} "
                f"has it at {level}; one variable, one level set"
            )
    return level


def _labelled_channels(name: str, segments: list[Segment], dim: str, units: str, recipe: Recipe) -> list[Channel]:
    """A `channel` dimension (NWB electrodes, columns) names its channels itself; every file must
    give the same names in the same order."""
    first = segments[0]
    labels = [str(v) for v in first.array[dim].values]
    if name in recipe.levels:
        raise SourceError(
            f"recipe 'levels' selects levels of '{name}', but its channels are named "
            f"{labels[:4]}{' ...' if len(labels) > 4 else ''} in {first.path}, not levels"
        )
    for seg in segments[1:]:
        other = [str(v) for v in seg.array[dim].values]
        if other != labels:
            raise SourceError(
                f"{seg.path}: '{name}' has {len(other)} channels {other[:6]}, but {first.path} has "
                f"{len(labels)} {labels[:6]}; every file must have the same channels"
            )
    return [Channel(label, name, None, units) for label in labels]


def _units(name: str, segments: list[Segment]) -> str:
    seen = {str(s.array.attrs.get("units", "")) for s in segments}
    if len(seen) > 1:
        listing = ", ".join(f"{s.path.name}: {s.array.attrs.get('units', '')!r}" for s in segments)
        raise SourceError(f"variable '{name}' has different units across files ({listing})")
    return seen.pop()


def derived_input(
    variable: str, segments: list[Segment], channels: list[Channel], sample: Callable[[], np.ndarray]
) -> Input:
    """A derived channel's input: units, first file, level units, kept levels and a sample to tell units by."""
    first = segments[0]
    found = [c for c in LEVEL_DIMS if c in first.array.coords]
    return Input(
        variable,
        _units(variable, segments),
        str(first.path),
        None if not found else level_units(first.array[found[0]]),
        sample,
        tuple(c.level for c in channels if c.variable == variable and c.level is not None),
        str(first.array.attrs.get("standard_name", "")),
    )


def add_derived(
    recipe: Recipe, channels: list[Channel], describe: Callable[[str], Input]
) -> tuple[list[Channel], list[Derived]]:
    """The recipe's `derived:` channels (preprocess.derived) appended after the source channels:
    (every channel, the derived ones' recipes); `describe(variable)` tells an input's units."""
    if not recipe.derived:
        return channels, []
    try:
        derived = plan_derived(list(recipe.derived), channels, channel_name, f"recipe {recipe.path}", describe)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    taken = {c.name for c in channels}
    for d in derived:
        if d.name in taken:
            raise SourceError(
                f"recipe {recipe.path}: derived channel '{d.name}' has the name of a channel already in the store; "
                "rename it"
            )
        taken.add(d.name)
    return channels + [Channel(d.name, d.variable, d.level, d.units) for d in derived], derived
