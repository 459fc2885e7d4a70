"""The sources' one grid: the same dimensions and coordinates in every file, and the static fields on it.

Grids that differ are refused, never regridded or reordered: a flipped axis and 0..360 against -180..180
longitudes are named as such, anything else by its first differing coordinate value. The same dimensions in
another order (WeatherBench 2's `geopotential(time, level, longitude, latitude)` beside `2m_temperature(time,
latitude, longitude)`) are one grid: the store takes the first variable's order and reads the others transposed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from canonstore.errors import SourceError
from canonstore.formats.coords import find_axis
from canonstore.preprocess.channels import CHANNEL_DIMS, LEVEL_DIMS
from canonstore.preprocess.recipe import Recipe
from canonstore.preprocess.timeaxis import Segment


def check_grid(segments: dict[str, list[Segment]], time_dim: str) -> tuple[tuple[str, ...], dict[str, xr.DataArray]]:
    """(grid dimensions, their coordinates loaded) shared by every variable in every file; else an error
    naming the file, variable and coordinate that differ."""
    ref = None
    for name, variable_segments in segments.items():
        for seg in variable_segments:
            dims = tuple(d for d in seg.array.dims if d != time_dim and d not in LEVEL_DIMS + CHANNEL_DIMS)
            coords = {
                d: seg.array[d] if d in seg.array.coords else xr.DataArray(np.arange(seg.array.sizes[d]), dims=d)
                for d in dims
            }
            if ref is None:
                ref, ref_where = (dims, coords), f"{seg.path} '{name}'"
                continue
            if sorted(dims) != sorted(ref[0]) or any(coords[d].size != ref[1][d].size for d in dims):
                raise SourceError(
                    f"{seg.path}: variable '{name}' is on grid "
                    f"{ {d: coords[d].size for d in dims} }, but {ref_where} is on "
                    f"{ {d: ref[1][d].size for d in ref[0]} }"
                )
            for d in dims:
                latitude = d in (find_axis({d: coords[d]}, "latitude"), find_axis({d: ref[1][d]}, "latitude"))
                _check_same_axis(
                    d, coords[d].values, ref[1][d].values, f"{seg.path}: variable '{name}'", ref_where, latitude
                )
                if not np.array_equal(coords[d].values, ref[1][d].values):
                    raise SourceError(
                        f"{seg.path}: variable '{name}': coordinate '{d}' differs from {ref_where} "
                        f"{_first_difference(coords[d].values, ref[1][d].values)}; "
                        "regrid or reorder the inputs to one grid first"
                    )
    dims, coords = ref
    # Keep non-dimension coordinates that live on the grid (e.g. lat/lon of a `location` dim).
    first = next(iter(segments.values()))[0].array
    for cname, coord in first.coords.items():
        if cname not in dims and coord.dims and set(coord.dims) <= set(dims):
            coords[cname] = coord
    return dims, {k: v.load() for k, v in coords.items()}


def _check_same_axis(
    dim: str, values: np.ndarray, reference: np.ndarray, where: str, ref_where: str, latitude: bool = False
) -> None:
    """Name the two grid mismatches that look alike but are not: flipped order and 0..360 vs -180..180.

    Both are refused rather than silently reordered: the user decides which convention the store uses.
    A flip is a flip even when the two grids differ in the last bits (np.linspace from either end);
    a latitude axis has no other convention, so it is never said to have one.
    """
    if values.size != reference.size or values.dtype.kind not in "fiu" or np.array_equal(values, reference):
        return
    if _nearly_equal(values[::-1], reference) and not _nearly_equal(values, reference):
        order = "descending" if values[0] > values[-1] else "ascending"
        raise SourceError(
            f"{where}: coordinate '{dim}' is {order} but {ref_where} has it the other way round; "
            f"canonstore does not reorder silently: flip one of them (e.g. `ds.sortby('{dim}')`) first"
        )
    if not latitude and np.allclose(np.sort(values % 360), np.sort(reference % 360)):
        raise SourceError(
            f"{where}: coordinate '{dim}' runs {values.min():g}..{values.max():g} but {ref_where} runs "
            f"{reference.min():g}..{reference.max():g} (the same longitudes, another convention); convert "
            f"one first, e.g. `ds.assign_coords({dim}=(ds.{dim} + 180) % 360 - 180).sortby('{dim}')`"
        )


def _nearly_equal(values: np.ndarray, reference: np.ndarray) -> bool:
    """Equal but for float rounding (1e-9 of the axis' extent): two ways of computing one grid."""
    values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    scale = max(float(np.abs(reference).max(initial=0.0)), float(np.ptp(reference)) if reference.size else 0.0, 1.0)
    return bool(np.allclose(values, reference, rtol=0.0, atol=1e-9 * scale))


def _first_difference(values: np.ndarray, reference: np.ndarray) -> str:
    """`at index 3 (35.00000000000001 vs 35, by 7.1e-15)`: every digit, so two values never print alike."""
    bad = int(np.flatnonzero(values != reference)[0])
    a, b = values[bad], reference[bad]
    if values.dtype.kind in "fiu" and reference.dtype.kind in "fiu":
        return f"at index {bad} ({float(a)!r} vs {float(b)!r}, by {abs(float(a) - float(b)):.2g})"
    return f"at index {bad} ({a} vs {b})"


def read_static(
    recipe: Recipe,
    parts: list[tuple[Path, xr.Dataset]],
    time_dim: str,
    space_dims: tuple[str, ...],
    coords: dict[str, xr.DataArray],
) -> dict[str, tuple[np.ndarray, str, Path]]:
    """The recipe's `static` fields: name -> (values on the grid in float64, units, the file they come from)."""
    static = {}
    for name in recipe.static:
        # A non-dimension coordinate is held too (xarray makes a variable one when another names it
        # in its `coordinates`, as tools that attach areacello to tos do).
        hits = [(p, ds) for p, ds in parts if name in ds.data_vars or (name in ds.coords and name not in ds.dims)]
        if not hits:
            raise SourceError(_static_not_held(name, parts, time_dim, recipe.sources))
        path, array = hits[0][0], hits[0][1][name]
        if time_dim in array.dims:
            if array.sizes[time_dim] != 1:
                raise SourceError(
                    f"{path}: static variable '{name}' has a time dimension of "
                    f"{array.sizes[time_dim]} steps; static fields must not vary"
                )
            array = array.isel({time_dim: 0})
        if set(array.dims) != set(space_dims):
            raise SourceError(f"{path}: static variable '{name}' has dims {array.dims}, expected the grid {space_dims}")
        array = array.transpose(*space_dims)
        for d in space_dims:
            if d in array.coords and not np.array_equal(array[d].values, coords[d].values):
                raise SourceError(f"{path}: static variable '{name}': coordinate '{d}' differs from the data grid")
        static[name] = (np.asarray(array.values, dtype=np.float64), str(array.attrs.get("units", "")), path)
    return static


def _static_not_held(name: str, parts: list[tuple[Path, xr.Dataset]], time_dim: str, files: tuple[Path, ...]) -> str:
    """Why static `name` is in no source, pointing where it is: CF and CMIP name a cell measure
    (areacella, areacello, ...) in `cell_measures` but keep its values in another (fx) file."""
    measures = cell_measures(parts)
    head = f"static variable '{name}' (recipe 'static') is in none of the sources"
    if name in measures:
        path, variable, elsewhere = measures[name]
        return (
            f"{head}: {path} names it as a cell measure of '{variable}' but does not hold its values, which "
            f"CMIP keeps in {elsewhere}; add that file to 'sources'"
        )
    if measures:
        listing = ", ".join(f"'{m}' (of '{v}' in {p.name}, kept in {e})" for m, (p, v, e) in measures.items())
        return (
            f"{head}; the sources name the cell measure(s) {listing}: name the one you mean in 'static' "
            "and add its file to 'sources'"
        )
    fixed = sorted({str(v) for _, ds in parts for v, a in ds.data_vars.items() if time_dim not in a.dims})
    return f"{head}; the variables without a time dimension there are {fixed or 'none'} (in {[str(p) for p in files]})"


def cell_measures(parts: list[tuple[Path, xr.Dataset]]) -> dict[str, tuple[Path, str, str]]:
    """Cell measures the sources name but do not hold: name -> (file, variable naming it, where its values are).

    CMIP keeps areacella, areacello, volcello... in separate fx files: CMIP5 names the file in a variable's
    `associated_files` (`areacella: areacella_fx_....nc`), CF 1.7 and CMIP6 list the name in the global
    `external_variables`. (A measure the file does hold, xarray makes a coordinate: it is found.)
    """
    found: dict[str, tuple[Path, str, str]] = {}
    for path, ds in parts:
        external = str(ds.attrs.get("external_variables", "")).split()
        for variable, array in ds.data_vars.items():
            words = str(array.attrs.get("cell_measures") or array.encoding.get("cell_measures") or "").split()
            files = str(array.attrs.get("associated_files", "")).split()
            kept = {
                key[:-1]: file
                for key, file in zip(files, files[1:])
                if key.endswith(":") and key not in ("baseURL:", "gridspecFile:")
            }
            for measure in dict.fromkeys(words[1::2] + list(kept) + external):
                if measure not in ds.variables and measure not in found:
                    found[measure] = (path, str(variable), kept.get(measure, "a separate fx file of the same run"))
    return found
