"""The recipe's inputs as one lazy (time, channel, *space) dataset, whatever their file format.

Sources are a small registry in the spirit of xarray's backends: one module per kind
(`netcdf_`, `grib_`, `nwb_`) implements `registry.SourceModule`: it opens one file lazily as xarray
Datasets in CF terms (a time coordinate, grid coordinates, `units`), chosen by file signature or suffix.
Everything that is not format-specific is written once, here: the time dimension found the CF way, time order and
duplicates across files, calendars, grids, levels and channels, units, gaps and sessions.
Nothing is read beyond coordinates: `Sources.read(t0, t1)` pulls one block of steps on demand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from canonstore._time import as_days, duration_label, is_dates, span, time_label
from canonstore.errors import SourceError
from canonstore.formats.coords import find_axis
from canonstore.preprocess.derived import MAX_HPA, Input, plan_derived
from canonstore.preprocess.recipe import Recipe
from canonstore.preprocess.registry import kind_of, module_of
from canonstore.splits.gaps import find_gaps
from canonstore.units import scale_to

# isort: off
# The one place the format modules are imported: each registers itself (registry.register). In this order, as
# `kind_of` asks them in the order registered: NWB files are HDF5 too, so NWB is asked first; NetCDF, the
# fallback, reads what no other kind claims.
import canonstore.preprocess.nwb_  # noqa: F401
import canonstore.preprocess.grib_  # noqa: F401
import canonstore.preprocess.netcdf_  # noqa: F401
# isort: on

CHANNEL_DIMS = ("channel",)  # a dimension whose labels are the channels' names (see _labelled_channels)
LEVEL_DIMS = ("level", "lev", "plev", "pressure_level", "pressure", "isobaricInhPa")
_CALENDAR_ALIASES = {"gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}


@dataclass(frozen=True)
class Channel:
    """One store channel: a variable at one level (or a surface variable)."""

    name: str
    variable: str
    level: float | None
    units: str


@dataclass
class _Segment:
    """The steps one file contributes to one variable: `keep` are positions inside the file."""

    path: Path
    array: xr.DataArray
    keep: np.ndarray
    session: str | None = None  # the session id a source module gives the file (NWB), else None


def find_time_dim(parts: list[tuple[Path, xr.Dataset]]) -> str:
    """The sample dimension the CF way: the dimension whose coordinate has `standard_name: time`,
    `axis: T` or a datetime dtype (CDS's `valid_time` included); `time` when no coordinate says so."""
    found: dict[str, Path] = {}
    for path, ds in parts:
        for dim in ds.dims:
            if dim in ds.coords and _is_time_coordinate(ds[dim]):
                found.setdefault(str(dim), path)
    if len(found) > 1:
        listing = ", ".join(f"'{d}' ({p.name})" for d, p in found.items())
        raise SourceError(
            f"several dimensions look like time ({listing}); name the sample dimension with `time_dim` in the recipe"
        )
    if found:
        return next(iter(found))
    return "time"  # no CF time coordinate: a bare `time` dimension, or the recipe names another one


def _is_time_coordinate(coord: xr.DataArray) -> bool:
    return (
        coord.attrs.get("standard_name") == "time"
        or str(coord.attrs.get("axis", "")).upper() == "T"
        or is_dates(np.asarray(coord.values[:1]))
    )


class Sources:
    """The recipe's inputs as one lazy (time, channel, *space) dataset."""

    def __init__(self, recipe: Recipe, step_days: float | None = None):
        """`step_days`: the regular step the time axis must keep (an append: the store's); default the median."""
        self.recipe = recipe
        self._step_days = step_days
        self.files = list(recipe.sources)
        self.kinds = {p: kind_of(p) for p in self.files}
        self._parts = [(p, ds) for p in self.files for ds in module_of(self.kinds[p]).open_parts(p, recipe)]
        self.time_dim = recipe.time_dim or find_time_dim(self._parts)
        variables = self._select_variables()
        self.calendar = self._check_calendar()
        self.time, segments = self._join_time(variables)
        self._segments = segments
        self.sessions, self.session = self._sessions(variables[0])
        self.space_dims, self.coords = self._check_grid(variables)
        self.latitude, self.longitude = find_axis(self.coords, "latitude"), find_axis(self.coords, "longitude")
        self.channels, self._level_index = self._make_channels(variables)
        self.static = self._read_static()
        self._apply_time_range()
        self.derived = self._plan_derived()  # after the time range: units may be told by sampled values
        self.gaps = self._find_gaps()

    # -- public -------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (len(self.channels),) + tuple(self.coords[d].size for d in self.space_dims)

    @property
    def float32_exact(self) -> np.ndarray:
        """Per channel: whether its variable decodes to values float32 holds exactly (float32 or float16
        in every file; packed integers decode to float64 through their scale_factor)."""
        exact = {
            v: all(np.dtype(seg.array.dtype) in (np.float32, np.float16) for seg in segments)
            for v, segments in self._segments.items()
        }
        return np.array([exact.get(c.variable, False) for c in self.channels], dtype=bool)  # derived: float64

    def read(self, start: int, stop: int, channels=None, dtype=np.float64) -> np.ndarray:
        """Steps [start, stop) of the selected time axis as `dtype` (steps, channel, *space).

        `channels` (ascending positions in `self.channels`, default all) are read alone: only the
        levels they name are read from the files, never a variable's every level.
        """
        wanted = np.arange(len(self.channels)) if channels is None else np.asarray(channels, dtype=np.int64)
        first_derived = len(self.channels) - len(self.derived)
        if wanted.size and wanted[-1] >= first_derived:  # derived channels: from their inputs, in float64
            mine = wanted[wanted >= first_derived] - first_derived
            inputs = np.unique(
                np.concatenate([wanted[wanted < first_derived]] + [np.array(self.derived[d].inputs) for d in mine])
            )
            physical = self.read(start, stop, inputs)
            at = {int(c): k for k, c in enumerate(inputs)}
            out = np.empty((stop - start, wanted.size) + self.sample_shape[1:], dtype=dtype)
            for k, c in enumerate(wanted):
                d = c - first_derived
                out[:, k] = (
                    physical[:, at[int(c)]]
                    if d < 0
                    else self.derived[d].compute([physical[:, at[i]] for i in self.derived[d].inputs])
                )
            return out
        out = np.empty((stop - start, wanted.size) + self.sample_shape[1:], dtype=dtype)
        start += self._offset
        stop += self._offset
        first = 0  # position of the variable's first channel in self.channels
        for variable, segments in self._segments.items():
            levels = self._level_index[variable]
            count = 1 if levels is None else levels.size
            mine = np.flatnonzero((wanted >= first) & (wanted < first + count))
            if mine.size:
                picked = None if levels is None else levels[wanted[mine] - first]
                out[:, mine] = self._read_variable(segments, start, stop, picked)  # (steps, levels, *space)
            first += count
        return out

    def file_of(self, variable: str, step: int) -> Path:
        """The source file that holds `step` (of the selected time axis) of `variable` (a derived
        channel's: its first input's)."""
        for d in self.derived:
            if d.variable == variable:
                variable = self.channels[d.inputs[0]].variable
        pos = step + self._offset
        for seg in self._segments[variable]:
            if pos < seg.keep.size:
                return seg.path
            pos -= seg.keep.size
        raise IndexError(f"step {step} is outside the time axis of '{variable}'")

    def time_label(self, step: int) -> str:
        """Step `step` as a readable time for messages (minutes resolution for dates, finer when needed)."""
        return time_label(self.time[step])

    def coverage(self) -> str:
        """Which variables and files set the time axis, for errors about what it covers."""
        parts = []
        for variable, segments in self._segments.items():
            files = [s.path.name for s in segments]
            shown = ", ".join(files) if len(files) <= 3 else f"{files[0]} .. {files[-1]} ({len(files)} files)"
            parts.append(f"'{variable}' from {shown}")
        return f"the time axis {span(self.time)} ({self.time.size} steps) comes from " + "; ".join(parts)

    def years(self) -> np.ndarray:
        self.require_dates("split by year")
        return xr.DataArray(self.time, dims="t").dt.year.values

    def require_dates(self, what: str) -> None:
        if not is_dates(self.time):
            raise SourceError(
                f"time axis '{self.time_dim}' holds {self.time.dtype} values, not dates: "
                f"{what} is impossible; use `splits: {{by: index, ...}}` or `{{by: blocks, block: N}}`"
            )

    # -- steps of __init__ ----------------------------------------------------------------
    def _select_variables(self) -> list[str]:
        tdim = self.time_dim
        present: dict[str, list[tuple[Path, xr.Dataset]]] = {}
        for path, ds in self._parts:
            for name, var in ds.data_vars.items():
                if tdim in var.dims:
                    present.setdefault(name, []).append((path, ds))
        wanted = list(self.recipe.variables) if self.recipe.variables else sorted(present)
        if not wanted:
            raise SourceError(
                f"no data variable with a '{tdim}' dimension in {[str(p) for p in self.files]}; "
                "name the variables (and `time_dim`) in the recipe"
            )
        everywhere = {name for _, ds in self._parts for name in ds.variables}
        for name in wanted:
            if name not in everywhere:
                raise SourceError(
                    f"variable '{name}' (recipe 'variables') is in none of the sources; found "
                    f"{sorted(present)} in {[str(p) for p in self.files]}"
                )
            if name not in present:
                raise SourceError(
                    f"variable '{name}' (recipe 'variables') has no '{tdim}' dimension in any source; "
                    f"found {sorted(present)} in {[str(p) for p in self.files]}"
                )
        for name in self.recipe.levels:
            if name not in wanted:
                raise SourceError(f"recipe 'levels' names '{name}', which is not a selected variable {wanted}")
        self._files_of = {name: present[name] for name in wanted}
        # Nothing is dropped silently: the build reports what the recipe leaves out, and which files
        # the globs matched without contributing anything (with what they hold instead).
        every = {name for _, ds in self._parts for name in ds.data_vars}
        self.ignored = sorted(every - set(wanted) - set(self.recipe.static))
        used = set(wanted) | set(self.recipe.static)
        held: dict[Path, set[str]] = {p: set() for p in self.files}
        for path, ds in self._parts:
            held[path] |= set(map(str, ds.data_vars))
        self.unused_files = [
            {"path": str(path), "variables": sorted(names)} for path, names in held.items() if not used & names
        ]
        return wanted

    def _check_calendar(self) -> str | None:
        seen = {}
        for path, ds in self._parts:
            enc = ds[self.time_dim].encoding if self.time_dim in ds.coords else {}
            if "calendar" in enc or "units" in enc:
                cal = str(enc.get("calendar", "standard")).lower()
                seen[path] = _CALENDAR_ALIASES.get(cal, cal)
        if len(set(seen.values())) > 1:
            listing = ", ".join(f"{p.name}: {c}" for p, c in seen.items())
            raise SourceError(f"sources mix calendars ({listing}); convert them to one calendar first")
        return next(iter(seen.values()), None)

    def _join_time(self, variables: list[str]) -> tuple[np.ndarray, dict[str, list[_Segment]]]:
        tdim = self.time_dim
        reference, segments = None, {}
        for name in variables:
            parts = []
            for path, ds in self._files_of[name]:
                array = ds[name]
                times = array[tdim].values if tdim in array.coords else np.arange(array.sizes[tdim])
                if times.size and not _strictly_increasing(times):
                    i = int(np.flatnonzero(~_increasing_pairs(times))[0])
                    problem = "is duplicated" if times[i] == times[i + 1] else "is not sorted"
                    raise SourceError(
                        f"{path}: variable '{name}': time {problem} at steps {i} and {i + 1} "
                        f"({times[i]} then {times[i + 1]})"
                    )
                parts.append((times, path, array, ds.attrs.get("canonstore_session")))
            parts.sort(key=lambda p: p[0][0] if p[0].size else 0)
            joined, name_segments, last, last_path = [], [], None, None
            for times, path, array, session in parts:
                keep = np.arange(times.size)
                if last is not None and times.size and times[0] <= last:
                    dup = times[times <= last]
                    if not np.all(np.isin(dup, np.concatenate(joined))):
                        raise SourceError(
                            f"variable '{name}': {path} starts at {times[0]}, before {last_path} ends "
                            f"({last}), without repeating its steps: the files overlap"
                        )
                    if self.recipe.on_duplicate_time == "error":
                        raise SourceError(
                            f"variable '{name}': time {dup[0]} appears in both {last_path} and {path}; "
                            "set `on_duplicate_time: keep_first` in the recipe to keep the first file's step"
                        )
                    keep = keep[times > last]
                if keep.size:
                    joined.append(times[keep])
                    name_segments.append(_Segment(path, array.transpose(tdim, ...), keep, session))
                    last, last_path = times[keep][-1], path
            axis = np.concatenate(joined) if joined else np.array([])
            if reference is None:
                reference, ref_name = axis, name
            elif axis.shape != reference.shape or not np.all(axis == reference):
                raise SourceError(
                    f"variable '{name}' has {axis.size} time steps ({span(axis)}) but "
                    f"'{ref_name}' has {reference.size} ({span(reference)}); "
                    "all variables must share one time axis"
                )
            segments[name] = name_segments
        return reference, segments

    def _sessions(self, variable: str) -> tuple[list[str], np.ndarray | None]:
        """Session ids in time order and each step's position among them, when a source module names
        sessions (NWB: one file per session); ([], None) otherwise."""
        segments = self._segments[variable]
        ids = [seg.session for seg in segments]
        if all(i is None for i in ids):
            return [], None
        seen: dict[str, Path] = {}
        for seg, sid in zip(segments, ids):
            if sid in seen:
                raise SourceError(
                    f"{seg.path} and {seen[sid]} both hold session '{sid}'; each session must come from one file"
                )
            seen[sid] = seg.path
        session = np.concatenate([np.full(seg.keep.size, k, dtype=np.int32) for k, seg in enumerate(segments)])
        return ids, session

    def _check_grid(self, variables: list[str]) -> tuple[tuple[str, ...], dict[str, xr.DataArray]]:
        tdim = self.time_dim
        ref = None
        for name in variables:
            for seg in self._segments[name]:
                dims = tuple(d for d in seg.array.dims if d != tdim and d not in LEVEL_DIMS + CHANNEL_DIMS)
                coords = {
                    d: seg.array[d] if d in seg.array.coords else xr.DataArray(np.arange(seg.array.sizes[d]), dims=d)
                    for d in dims
                }
                if ref is None:
                    ref, ref_where = (dims, coords), f"{seg.path} '{name}'"
                    continue
                if dims != ref[0] or any(coords[d].size != ref[1][d].size for d in dims):
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
        first = self._segments[variables[0]][0].array
        for cname, coord in first.coords.items():
            if cname not in dims and coord.dims and set(coord.dims) <= set(dims):
                coords[cname] = coord
        return dims, {k: v.load() for k, v in coords.items()}

    def _make_channels(self, variables: list[str]) -> tuple[list[Channel], dict]:
        channels, level_index = [], {}
        for name in variables:
            array = self._segments[name][0].array
            units = self._units(name)
            level_dims = [d for d in array.dims if d in LEVEL_DIMS + CHANNEL_DIMS]
            if not level_dims:
                if name in self.recipe.levels:
                    raise SourceError(
                        f"recipe 'levels' selects levels of '{name}', but it has no level dimension "
                        f"in {self._segments[name][0].path}"
                    )
                level = self._scalar_level(name)
                channels.append(Channel(name if level is None else channel_name(name, level), name, level, units))
                level_index[name] = None
                continue
            ldim = level_dims[0]
            self._segments[name] = [
                dataclasses.replace(s, array=s.array.transpose(self.time_dim, ldim, *self.space_dims))
                for s in self._segments[name]
            ]
            if ldim in CHANNEL_DIMS:
                channels += self._labelled_channels(name, ldim, units)
                level_index[name] = np.arange(array.sizes[ldim])
                continue
            values = _levels_in_hpa(array[ldim])
            for seg in self._segments[name][1:]:
                if not np.array_equal(_levels_in_hpa(seg.array[ldim]), values):
                    raise SourceError(
                        f"{seg.path}: variable '{name}' has levels {list(_levels_in_hpa(seg.array[ldim]))}, "
                        f"but {self._segments[name][0].path} has {list(values)}"
                    )
            wanted = self.recipe.levels.get(name, list(values))
            idx = []
            for lev in wanted:
                hit = np.flatnonzero(np.isclose(values, lev))
                if not hit.size:
                    raise SourceError(
                        f"variable '{name}' has no level {lev:g} (recipe 'levels'); "
                        f"available in {self._segments[name][0].path}: {[float(v) for v in values]}"
                    )
                idx.append(int(hit[0]))
                channels.append(Channel(channel_name(name, values[hit[0]]), name, float(values[hit[0]]), units))
            level_index[name] = np.array(idx)
        names = [c.name for c in channels]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            who = "; ".join(
                f"{c.name} = '{c.variable}'" + ("" if c.level is None else f" at {c.level:g} hPa")
                for c in channels
                if c.name in clash
            )
            raise SourceError(f"two channels would have the same name ({who}); rename a variable in the sources")
        return channels, level_index

    def _plan_derived(self) -> list:
        """The recipe's `derived:` channels, appended after the source channels (preprocess.derived)."""
        if not self.recipe.derived:
            return []
        try:
            derived = plan_derived(
                list(self.recipe.derived),
                self.channels,
                channel_name,
                f"recipe {self.recipe.path}",
                self._derived_input,
            )
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        taken = {c.name for c in self.channels}
        for d in derived:
            if d.name in taken:
                raise SourceError(
                    f"recipe {self.recipe.path}: derived channel '{d.name}' has the name of a channel "
                    "already in the store; rename it"
                )
            taken.add(d.name)
        self.channels = self.channels + [Channel(d.name, d.variable, d.level, d.units) for d in derived]
        return derived

    def _derived_input(self, variable: str) -> Input:
        """A derived channel's input: units, first file, level units and a sample to tell units by."""
        first = self._segments[variable][0]
        found = [c for c in LEVEL_DIMS if c in first.array.coords]
        levels = tuple(c.level for c in self.channels if c.variable == variable and c.level is not None)
        return Input(
            variable,
            self._units(variable),
            str(first.path),
            None if not found else _level_units(first.array[found[0]]),
            lambda: self._sample(variable),
            levels,
            str(first.array.attrs.get("standard_name", "")),
        )

    def _sample(self, variable: str) -> np.ndarray:
        """The least and greatest finite physical value of `variable` (none when it has none), every kept level,
        at up to 8 steps spread over the selected axis: all that tells units by value (`derived._range`). One step
        of one level is read at a time: the 8 steps of 37 levels at once, then in float64, were 2.5 GB at ERA5's
        0.25 degrees."""
        steps = np.unique(np.linspace(0, self.time.size - 1, min(8, self.time.size)).astype(np.int64))
        segments, levels = self._segments[variable], self._level_index[variable]
        lo, hi = np.inf, -np.inf
        for s in steps + self._offset:
            for level in [None] if levels is None else [[i] for i in levels]:
                values = self._read_variable(segments, s, s + 1, level)
                finite = values[np.isfinite(values)]
                if finite.size:
                    lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        return np.array([lo, hi] if lo <= hi else [], dtype=np.float64)

    def _scalar_level(self, name: str) -> float | None:
        """The level of a variable stored at one level as a scalar coordinate (a GRIB file of t at
        500 hPa, a NetCDF `plev` of size 0-d), the same in every file; None for a surface variable."""

        def level_of(seg):
            found = [c for c in LEVEL_DIMS if c in seg.array.coords and seg.array[c].ndim == 0]
            return None if not found else float(_levels_in_hpa(seg.array[found[0]]))

        first = self._segments[name][0]
        level = level_of(first)
        for seg in self._segments[name][1:]:
            if level_of(seg) != level:
                raise SourceError(
                    f"{seg.path}: variable '{name}' is at level {level_of(seg)}, but {first.path} "
                    f"has it at {level}; one variable, one level set"
                )
        return level

    def _labelled_channels(self, name: str, dim: str, units: str) -> list[Channel]:
        """A `channel` dimension (NWB electrodes, columns) names its channels itself; every file must
        give the same names in the same order."""
        first = self._segments[name][0]
        labels = [str(v) for v in first.array[dim].values]
        if name in self.recipe.levels:
            raise SourceError(
                f"recipe 'levels' selects levels of '{name}', but its channels are named "
                f"{labels[:4]}{' ...' if len(labels) > 4 else ''} in {first.path}, not levels"
            )
        for seg in self._segments[name][1:]:
            other = [str(v) for v in seg.array[dim].values]
            if other != labels:
                raise SourceError(
                    f"{seg.path}: '{name}' has {len(other)} channels {other[:6]}, but {first.path} has "
                    f"{len(labels)} {labels[:6]}; every file must have the same channels"
                )
        return [Channel(label, name, None, units) for label in labels]

    def _units(self, name: str) -> str:
        seen = {str(s.array.attrs.get("units", "")) for s in self._segments[name]}
        if len(seen) > 1:
            listing = ", ".join(f"{s.path.name}: {s.array.attrs.get('units', '')!r}" for s in self._segments[name])
            raise SourceError(f"variable '{name}' has different units across files ({listing})")
        return seen.pop()

    def _read_static(self) -> dict[str, tuple[np.ndarray, str, Path]]:
        static = {}
        for name in self.recipe.static:
            # A non-dimension coordinate is held too (xarray makes a variable one when another names it
            # in its `coordinates`, as tools that attach areacello to tos do).
            hits = [
                (p, ds) for p, ds in self._parts if name in ds.data_vars or (name in ds.coords and name not in ds.dims)
            ]
            if not hits:
                raise SourceError(self._static_not_held(name))
            path, array = hits[0][0], hits[0][1][name]
            if self.time_dim in array.dims:
                if array.sizes[self.time_dim] != 1:
                    raise SourceError(
                        f"{path}: static variable '{name}' has a time dimension of "
                        f"{array.sizes[self.time_dim]} steps; static fields must not vary"
                    )
                array = array.isel({self.time_dim: 0})
            if set(array.dims) != set(self.space_dims):
                raise SourceError(
                    f"{path}: static variable '{name}' has dims {array.dims}, expected the grid {self.space_dims}"
                )
            array = array.transpose(*self.space_dims)
            for d in self.space_dims:
                if d in array.coords and not np.array_equal(array[d].values, self.coords[d].values):
                    raise SourceError(f"{path}: static variable '{name}': coordinate '{d}' differs from the data grid")
            static[name] = (np.asarray(array.values, dtype=np.float64), str(array.attrs.get("units", "")), path)
        return static

    def _static_not_held(self, name: str) -> str:
        """Why static `name` is in no source, pointing where it is: CF and CMIP name a cell measure
        (areacella, areacello, ...) in `cell_measures` but keep its values in another (fx) file."""
        measures = cell_measures(self._parts)
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
        fixed = sorted(
            {str(v) for _, ds in self._parts for v, a in ds.data_vars.items() if self.time_dim not in a.dims}
        )
        return (
            f"{head}; the variables without a time dimension there are {fixed or 'none'} "
            f"(in {[str(p) for p in self.files]})"
        )

    def _apply_time_range(self) -> None:
        self._offset = 0
        start, end = self.recipe.time_start, self.recipe.time_end
        if start is None and end is None:
            return
        if not is_dates(self.time):
            raise SourceError(f"recipe 'time' selects dates, but '{self.time_dim}' holds {self.time.dtype} values")
        axis = xr.DataArray(np.arange(self.time.size), coords={"t": self.time}, dims="t")
        try:  # the dates are text (recipe.read_yaml): the data's calendar decides whether 2030-02-30 exists
            positions = axis.sel(t=slice(start, end))
        except (TypeError, ValueError, KeyError) as exc:
            raise SourceError(
                f"recipe {self.recipe.path}: 'time' {start}..{end} is not a range of dates in the "
                f"sources' calendar ({self.calendar or 'standard'}): {exc}"
            ) from None
        if positions.size == 0:
            raise SourceError(f"recipe 'time' {start}..{end} selects no step; the sources cover {span(self.time)}")
        self._offset = int(positions.values[0])
        self.time = self.time[self._offset : int(positions.values[-1]) + 1]
        if self.session is not None:
            self.session = self.session[self._offset : self._offset + self.time.size]

    def _find_gaps(self) -> list[int]:
        """Steps after which the time axis jumps by more than 1.5 usual steps; an error unless the
        recipe says `time_gaps: allow` (then the build reports them and windows never span them).
        A step shorter than the usual one is always an error (`_refuse_finer_steps`)."""
        # Sessions (NWB) are recorded apart: each one ends a run of steps whatever the jump, and the
        # usual step is each session's own (rates may differ between sessions).
        runs = (
            [0, self.time.size]
            if self.session is None
            else [0, *(np.flatnonzero(np.diff(self.session)) + 1), self.time.size]
        )
        gaps, usual = [], None
        for lo, hi in zip(runs[:-1], runs[1:]):
            days = as_days(self.time[lo:hi])
            if days is None or days.size < 2:
                continue
            step = self._step_days if self._step_days and self.session is None else find_gaps(self.time[lo:hi])[1]
            if step is None:  # fewer than 3 steps: no usual step to measure against
                continue
            self._refuse_finer_steps(lo, np.diff(days), step)
            gaps += [lo + int(i) for i in np.flatnonzero(np.diff(days) > 1.5 * step)]
            usual = step
        if gaps and self.recipe.time_gaps == "error":
            i, variable = gaps[0], next(iter(self._segments))
            first, after = self.file_of(variable, i), self.file_of(variable, i + 1)
            files = str(first) if first == after else f"{first} and {after}"
            raise SourceError(
                f"time axis has {len(gaps)} gap(s) longer than the usual step of {duration_label(usual)}: first "
                f"between {self.time_label(i)} and {self.time_label(i + 1)} ({files}); "
                "set `time_gaps: allow` in the recipe if the gaps are expected"
            )
        return sorted(gaps + [int(r) - 1 for r in runs[1:-1]])

    def _refuse_finer_steps(self, lo: int, steps: np.ndarray, usual: float) -> None:
        """A store has one regular step: a lead-1 pair must always span the same time. A step shorter
        than 1/1.5 of the usual one (3-hourly files among 6-hourly ones, 12:00 stamps after 00:00
        ones) is an error naming the files and times; the month lengths of monthly data pass."""
        short = lo + np.flatnonzero(steps < usual / 1.5)
        if not short.size:
            return
        segments = next(iter(self._segments.values()))
        ends = np.cumsum([seg.keep.size for seg in segments]) - self._offset  # each file's last step + 1
        which = np.unique(np.searchsorted(ends, np.concatenate([short, short + 1]), side="right"))
        files = [str(segments[k].path) for k in which]
        named = ", ".join(files[:4]) + (f" (and {len(files) - 4} more)" if len(files) > 4 else "")
        i = int(short[0])
        raise SourceError(
            f"time step of {duration_label(float(steps[i - lo]))} between {self.time_label(i)} and "
            f"{self.time_label(i + 1)}, shorter than the usual {duration_label(usual)} ({short.size} such "
            f"step(s), in {named}): a store has one regular time step; resample the finer data to "
            f"{duration_label(usual)} or leave those files out of `sources`"
        )

    # -- reading ---------------------------------------------------------------------------
    def _read_variable(self, segments: list[_Segment], start: int, stop: int, levels=None) -> np.ndarray:
        blocks, pos = [], 0
        for seg in segments:
            lo, hi = max(start, pos), min(stop, pos + seg.keep.size)
            if lo < hi:
                local = seg.keep[lo - pos : hi - pos]
                sel = {
                    self.time_dim: slice(int(local[0]), int(local[-1]) + 1)
                    if local[-1] - local[0] + 1 == local.size
                    else local
                }
                if levels is not None:  # the level dimension follows time (see _make_channels)
                    sel[seg.array.dims[1]] = _as_slice(levels)
                try:
                    values = seg.array.isel(sel).values
                except Exception as exc:  # netCDF4/HDF5 raise many types for damaged files
                    raise SourceError(
                        f"{seg.path}: cannot read steps {int(local[0])}..{int(local[-1])}: {exc}"
                    ) from exc
                blocks.append(values)
            pos += seg.keep.size
            if pos >= stop:
                break
        block = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        return block if block.ndim == 2 + len(self.space_dims) else block[:, None]

    def close(self) -> None:
        for _, ds in self._parts:
            ds.close()


def open_sources(recipe: Recipe, step_days: float | None = None) -> Sources:
    """Open and check every source of `recipe`; see `Sources`."""
    return Sources(recipe, step_days)


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


def _as_slice(index: np.ndarray):
    """A run of consecutive positions as a slice (one contiguous read), anything else as it is."""
    index = np.asarray(index)
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return index


def _levels_in_hpa(coord: xr.DataArray) -> np.ndarray:
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


def _level_units(coord: xr.DataArray) -> str:
    """'hPa' for a pressure axis (`_levels_in_hpa` gives hPa: units hPa, mbar or Pa, or none), else its units."""
    units = str(coord.attrs.get("units", ""))
    return "hPa" if not units.strip() or scale_to(units, "hPa") or coord.name == "isobaricInhPa" else units


def channel_name(variable: str, level: float) -> str:
    """`z` at 500 hPa -> `z500`; a variable ending in a digit gets a separator: `o3` at 1 hPa -> `o3_1`
    (never `o31`, which reads as o3 at 1 or o31 at nothing). 2.5 hPa -> `2p5`."""
    text = str(int(level)) if float(level).is_integer() else f"{level:g}".replace(".", "p")
    return f"{variable}_{text}" if variable[-1:].isdigit() else f"{variable}{text}"


def _increasing_pairs(times: np.ndarray) -> np.ndarray:
    return np.array([a < b for a, b in zip(times[:-1], times[1:])], dtype=bool)


def _strictly_increasing(times: np.ndarray) -> bool:
    if times.dtype != object:
        return bool(np.all(times[1:] > times[:-1]))
    return bool(_increasing_pairs(times).all())


def store_values(sources: Sources, mask_channels: list[int], start: int, stop: int, c0: int, c1: int) -> np.ndarray:
    """Physical values of store channels [c0, c1) for steps [start, stop): source channels, then the
    `<channel>_valid` channels (1 observed, 0 NaN) that the plan added for time-varying NaN patterns."""
    nsrc = len(sources.channels)
    wanted = np.arange(c0, c1)
    source_of = np.where(
        wanted < nsrc, wanted, np.asarray(list(mask_channels) + [0], dtype=np.int64)[np.maximum(wanted - nsrc, 0)]
    )
    needed = np.unique(source_of)
    raw = sources.read(start, stop, needed)
    if not np.array_equal(needed, source_of):  # a `_valid` channel repeats its source channel
        raw = raw[:, np.searchsorted(needed, source_of)]
    valid = wanted >= nsrc
    if valid.any():
        raw[:, valid] = ~np.isnan(raw[:, valid])
    return raw
