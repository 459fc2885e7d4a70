"""The recipe's inputs as one lazy (time, channel, *space) dataset, whatever their file format.

`Sources` composes the steps, each written once for every format: the files opened by their kind's module
(`registry`: `netcdf_`, `grib_`, `nwb_`), the recipe's variables, their levels and channels (`channels`),
the time axis joined across files (`timeaxis`), the grid and static fields (`grids`), the derived channels.
Nothing is read beyond coordinates: `Sources.read(t0, t1)` pulls one block of steps on demand, and
`store_values` gives a store's physical channel values from it (the build and the raw loader read through it).

    sources = open_sources(load_recipe("recipes/demo.yaml"))
    sources.read(0, 4).shape                  # -> (4, 24, 32, 64): steps, channels, lat, lon
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import xarray as xr

from canonstore._time import is_dates, span, time_label
from canonstore.errors import SourceError, first_line
from canonstore.formats.coords import find_axis
from canonstore.preprocess.channels import Channel, add_derived, derived_input, make_channels, select_variables
from canonstore.preprocess.derived_units import Input
from canonstore.preprocess.grids import check_grid, read_static
from canonstore.preprocess.recipe import Recipe, load_recipe
from canonstore.preprocess.registry import kind_of, module_of
from canonstore.preprocess.timeaxis import (
    Segment,
    check_calendar,
    file_at,
    find_time_dim,
    gaps_of,
    join_time,
    select_range,
    sessions_of,
)

# isort: off
# The one place the format modules are imported: each registers itself (registry.register). In this order, as
# `kind_of` asks them in the order registered: Zarr claims folders and URLs only; NWB files are HDF5 too, so NWB
# is asked before NetCDF, the fallback, which reads what no other kind claims.
import canonstore.preprocess.zarr_source  # noqa: F401
import canonstore.preprocess.nwb_  # noqa: F401
import canonstore.preprocess.grib_  # noqa: F401
import canonstore.preprocess.netcdf_  # noqa: F401
# isort: on

__all__ = ["Channel", "Sources", "kind_of", "load_recipe", "open_sources", "store_values"]


class Sources:
    """The recipe's inputs as one lazy (time, channel, *space) dataset."""

    def __init__(self, recipe: Recipe, step_days: float | None = None):
        """`step_days`: the regular step the time axis must keep (an append: the store's); default the median."""
        self.recipe = recipe
        self._reading = threading.RLock()  # one read at a time: not every format's library is thread-safe
        self.files = list(recipe.sources)
        self.kinds = {p: kind_of(p) for p in self.files}
        self._parts = [(p, ds) for p in self.files for ds in module_of(self.kinds[p]).open_parts(p, recipe)]
        self.time_dim = recipe.time_dim or find_time_dim(self._parts)
        selection = select_variables(self._parts, recipe, self.time_dim)
        self.ignored, self.unused_files = selection.ignored, selection.unused_files
        self.calendar = check_calendar(self._parts, self.time_dim)
        self.time, self._segments = join_time(selection.files_of, self.time_dim, recipe.on_duplicate_time)
        self.sessions, self.session = sessions_of(next(iter(self._segments.values())))
        self.space_dims, self.coords = check_grid(self._segments, self.time_dim)
        self.latitude, self.longitude = find_axis(self.coords, "latitude"), find_axis(self.coords, "longitude")
        self.channels, self._level_index, self._segments = make_channels(
            self._segments, recipe, self.time_dim, self.space_dims
        )
        self.static = read_static(recipe, self._parts, self.time_dim, self.space_dims, self.coords)
        self._offset, stop = select_range(self.time, recipe, self.time_dim, self.calendar)
        self.time = self.time[self._offset : stop]
        if self.session is not None:
            self.session = self.session[self._offset : stop]
        # after the time range: units may be told by sampled values
        self.channels, self.derived = add_derived(recipe, self.channels, self._derived_input)
        first = next(iter(self._segments.values()))
        self.gaps = gaps_of(self.time, self.session, step_days, recipe.time_gaps, first, self._offset)

    # -- public -------------------------------------------------------------------------
    @property
    def parts(self) -> list[tuple[Path, xr.Dataset]]:
        """Every (file, lazy Dataset) the recipe's sources opened to, in input order."""
        return self._parts

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
        levels they name are read from the files, never a variable's every level. Safe to call from
        several threads (one reads at a time).
        """
        with self._reading:
            return self._read(start, stop, channels, dtype)

    def _read(self, start: int, stop: int, channels=None, dtype=np.float64) -> np.ndarray:
        wanted = np.arange(len(self.channels)) if channels is None else np.asarray(channels, dtype=np.int64)
        first_derived = len(self.channels) - len(self.derived)
        if wanted.size and wanted[-1] >= first_derived:  # derived channels: from their inputs, in float64
            mine = wanted[wanted >= first_derived] - first_derived
            inputs = np.unique(
                np.concatenate([wanted[wanted < first_derived]] + [np.array(self.derived[d].inputs) for d in mine])
            )
            physical = self._read(start, stop, inputs)
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
        path = file_at(self._segments[variable], step + self._offset)
        if path is not None:
            return path
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

    # -- reading: a derived channel's inputs sampled, a variable's steps across its files ------------
    def _derived_input(self, variable: str) -> Input:
        """A derived channel's input: units, first file, level units and a sample to tell units by."""
        return derived_input(variable, self._segments[variable], self.channels, lambda: self._sample(variable))

    def _sample(self, variable: str) -> np.ndarray:
        """The least and greatest finite physical value of `variable` (none when it has none), every kept level,
        at up to 8 steps spread over the selected axis: all that tells units by value (`derived_units._range`). One step
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

    def _read_variable(self, segments: list[Segment], start: int, stop: int, levels=None) -> np.ndarray:
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
                if levels is not None:  # the level dimension follows time (channels.make_channels)
                    sel[seg.array.dims[1]] = _as_slice(levels)
                try:
                    values = seg.array.isel(sel).values
                except Exception as exc:  # netCDF4/HDF5 raise many types for damaged files
                    raise SourceError(
                        f"{seg.path}: cannot read steps {int(local[0])}..{int(local[-1])}: {first_line(exc)}"
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


def _as_slice(index: np.ndarray):
    """A run of consecutive positions as a slice (one contiguous read), anything else as it is."""
    index = np.asarray(index)
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return index


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
