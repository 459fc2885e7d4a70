"""The sources' one time axis: its dimension, joined across files, calendars, sessions, the recipe's range, gaps.

Files are joined per variable in time order; a step two files share is an error unless the recipe says
`on_duplicate_time: keep_first`, and every variable must end up on the same axis. A store has one regular
step: a shorter step is always an error, a longer one (a gap) unless the recipe says `time_gaps: allow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from canonstore._time import as_days, duration_label, is_dates, span, time_label
from canonstore.errors import SourceError
from canonstore.preprocess.recipe import Recipe
from canonstore.splits.gaps import find_gaps, step_tolerance

_CALENDAR_ALIASES = {"gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}


@dataclass(frozen=True)
class Segment:
    """The steps one file contributes to one variable: `keep` are positions inside the file."""

    path: Path
    array: xr.DataArray
    keep: np.ndarray
    session: str | None = None  # the session id a source module gives the file (NWB), else None


def file_at(segments: list[Segment], position: int) -> Path | None:
    """The file of `segments` that holds step `position` of their joined axis; None past its end."""
    for seg in segments:
        if position < seg.keep.size:
            return seg.path
        position -= seg.keep.size
    return None


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


def check_calendar(parts: list[tuple[Path, xr.Dataset]], time_dim: str) -> str | None:
    """The one calendar every file's time axis is in (aliases as their CF name); None when no file says."""
    seen = {}
    for path, ds in parts:
        enc = ds[time_dim].encoding if time_dim in ds.coords else {}
        if "calendar" in enc or "units" in enc:
            cal = str(enc.get("calendar", "standard")).lower()
            seen[path] = _CALENDAR_ALIASES.get(cal, cal)
    if len(set(seen.values())) > 1:
        listing = ", ".join(f"{p.name}: {c}" for p, c in seen.items())
        raise SourceError(f"sources mix calendars ({listing}); convert them to one calendar first")
    return next(iter(seen.values()), None)


def join_time(
    files_of: dict[str, list[tuple[Path, xr.Dataset]]], time_dim: str, on_duplicate_time: str
) -> tuple[np.ndarray, dict[str, list[Segment]]]:
    """Each variable's files joined in time order, and the axis they share: (time, {variable: segments})."""
    reference, segments = None, {}
    for name, files in files_of.items():
        parts = []
        for path, ds in files:
            array = ds[name]
            times = array[time_dim].values if time_dim in array.coords else np.arange(array.sizes[time_dim])
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
                if on_duplicate_time == "error":
                    raise SourceError(
                        f"variable '{name}': time {dup[0]} appears in both {last_path} and {path}; "
                        "set `on_duplicate_time: keep_first` in the recipe to keep the first file's step"
                    )
                keep = keep[times > last]
            if keep.size:
                joined.append(times[keep])
                name_segments.append(Segment(path, array.transpose(time_dim, ...), keep, session))
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


def sessions_of(segments: list[Segment]) -> tuple[list[str], np.ndarray | None]:
    """Session ids in time order and each step's position among them, when a source module names
    sessions (NWB: one file per session); ([], None) otherwise."""
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


def select_range(time: np.ndarray, recipe: Recipe, time_dim: str, calendar: str | None) -> tuple[int, int]:
    """The steps [first, stop) of `time` the recipe's `time: {start, end}` selects (all of them without one)."""
    start, end = recipe.time_start, recipe.time_end
    if start is None and end is None:
        return 0, time.size
    if not is_dates(time):
        raise SourceError(f"recipe 'time' selects dates, but '{time_dim}' holds {time.dtype} values")
    axis = xr.DataArray(np.arange(time.size), coords={"t": time}, dims="t")
    try:  # the dates are text (recipe.read_yaml): the data's calendar decides whether 2030-02-30 exists
        positions = axis.sel(t=slice(start, end))
    except (TypeError, ValueError, KeyError) as exc:
        raise SourceError(
            f"recipe {recipe.path}: 'time' {start}..{end} is not a range of dates in the "
            f"sources' calendar ({calendar or 'standard'}): {exc}"
        ) from None
    if positions.size == 0:
        raise SourceError(f"recipe 'time' {start}..{end} selects no step; the sources cover {span(time)}")
    return int(positions.values[0]), int(positions.values[-1]) + 1


def gaps_of(
    time: np.ndarray,
    session: np.ndarray | None,
    step_days: float | None,
    time_gaps: str,
    segments: list[Segment],
    offset: int,
) -> list[int]:
    """Steps after which the time axis jumps by more than one usual step (`step_tolerance`); an error unless the
    recipe says `time_gaps: allow` (then the build reports them and windows never span them).
    A step shorter than the usual one is always an error (`_refuse_finer_steps`).

    `step_days`: the regular step the axis must keep (an append: the store's), else each run's median;
    `segments` (one variable's) and `offset` (the axis' first step among theirs) name the files at fault.
    """
    # Sessions (NWB) are recorded apart: each one ends a run of steps whatever the jump, and the
    # usual step is each session's own (rates may differ between sessions).
    runs = [0, time.size] if session is None else [0, *(np.flatnonzero(np.diff(session)) + 1), time.size]
    gaps, usual = [], None
    for lo, hi in zip(runs[:-1], runs[1:]):
        days = as_days(time[lo:hi])
        if days is None or days.size < 2:
            continue
        step = step_days if step_days and session is None else find_gaps(time[lo:hi])[1]
        if step is None:  # fewer than 3 steps: no usual step to measure against
            continue
        _refuse_finer_steps(time, lo, np.diff(days), step, segments, offset)
        gaps += [lo + int(i) for i in np.flatnonzero(np.diff(days) > step_tolerance(step) * step)]
        usual = step
    if gaps and time_gaps == "error":
        i = gaps[0]
        first, after = file_at(segments, i + offset), file_at(segments, i + 1 + offset)
        files = str(first) if first == after else f"{first} and {after}"
        raise SourceError(
            f"time axis has {len(gaps)} gap(s) longer than the usual step of {duration_label(usual)}: first "
            f"between {time_label(time[i])} and {time_label(time[i + 1])} ({files}); "
            "set `time_gaps: allow` in the recipe if the gaps are expected"
        )
    return sorted(gaps + [int(r) - 1 for r in runs[1:-1]])


def _refuse_finer_steps(
    time: np.ndarray, lo: int, steps: np.ndarray, usual: float, segments: list[Segment], offset: int
) -> None:
    """A store has one regular step: a lead-1 pair must always span the same time. A step shorter
    than the usual one by more than `step_tolerance` (3-hourly files among 6-hourly ones, 12:00 stamps
    after 00:00 ones, 22:00 after 18:00 on a 6-hourly axis) is an error naming the files and times; the
    month lengths of monthly data pass."""
    short = lo + np.flatnonzero(steps < usual / step_tolerance(usual))
    if not short.size:
        return
    ends = np.cumsum([seg.keep.size for seg in segments]) - offset  # each file's last step + 1
    which = np.unique(np.searchsorted(ends, np.concatenate([short, short + 1]), side="right"))
    files = [str(segments[k].path) for k in which]
    named = ", ".join(files[:4]) + (f" (and {len(files) - 4} more)" if len(files) > 4 else "")
    i = int(short[0])
    raise SourceError(
        f"time step of {duration_label(float(steps[i - lo]))} between {time_label(time[i])} and "
        f"{time_label(time[i + 1])}, shorter than the usual {duration_label(usual)} ({short.size} such "
        f"step(s), in {named}): a store has one regular time step; resample the finer data to "
        f"{duration_label(usual)} or leave those files out of `sources`"
    )


def _increasing_pairs(times: np.ndarray) -> np.ndarray:
    return np.array([a < b for a, b in zip(times[:-1], times[1:])], dtype=bool)


def _strictly_increasing(times: np.ndarray) -> bool:
    if times.dtype != object:
        return bool(np.all(times[1:] > times[:-1]))
    return bool(_increasing_pairs(times).all())
