"""Which store step each forecast of a file is of: its init times and leads matched to the store's time axis.

    steps, leads = truth_steps(fc, store, path)     # (time, lead) -> the store step it forecasts

Each (time, lead) is scored once and only against the step it forecasts: an init time must be a store
step, a lead counts store steps or a time (`lead_steps`), a window never spans a gap of the store's time
axis, and a `valid_time` in the file must be the store's time there. Anything else is refused in one line.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from canonstore._time import as_days, is_dates
from canonstore.errors import RunError
from canonstore.splits.gaps import segment_ids
from canonstore.units import key, scale_to

STEP_UNITS = {"", "storesteps", "storestep", "steps", "step"}  # a lead in these (`units.key`) counts store steps


def truth_steps(fc: xr.Dataset, store, path) -> tuple[np.ndarray, np.ndarray]:
    """((time, lead) int: the store step each forecast is of, (lead,) int: each lead in store steps).

    Each (time, lead) is scored once: repeated init times or leads are refused, an init time must be
    a store step, the window must not span a gap of the store's time axis, and `valid_time` (computed
    when the file has none) must be the store's time at that step. A lead in time units (`lead_steps`)
    must be that much time after the init time.
    """
    for name in ("time", "lead"):
        if name not in fc.coords:
            raise RunError(
                f"{path}: no '{name}' coordinate, so which forecast is which cannot be told: write `time` "
                f"(the init times) and `lead` (store steps ahead) with the forecast"
            )
    init, lead = fc["time"].values, fc["lead"].values
    if not (init.size and lead.size):
        raise RunError(f"{path}: holds no forecasts ({init.size} init times, {lead.size} leads)")
    for name, values in (("init time", init), ("lead", lead)):
        kept, counts = np.unique(values, return_counts=True)
        if (counts > 1).any():
            raise RunError(
                f"{path}: {name}(s) {[str(v) for v in kept[counts > 1][:3]]} appear more than once "
                f"({int((counts - 1).sum())} repeats): keep one forecast per (time, lead)"
            )
    leads, seconds = lead_steps(fc["lead"], store, path)
    positions = find_steps(store, init, path, "init time")
    steps = positions[:, None] + leads[None, :]
    last = store.time.size - 1
    outside = (steps < 0) | (steps > last)
    if outside.any():
        t, k = np.argwhere(outside)[0]
        raise RunError(
            f"{path}: (time {init[t]}, lead {lead[k]}) forecasts beyond the store's time axis "
            f"({store.time[0]} .. {store.time[last]}): score it against a store that holds its valid times"
        )
    segment = segment_ids(store.time.size, store.gaps)
    spans = segment[steps] != segment[positions][:, None]
    if spans.any():
        t, k = np.argwhere(spans)[0]
        raise RunError(
            f"{path}: (time {init[t]}, lead {lead[k]}) spans a gap in the store's time axis, so its lead "
            f"is not {leads[k]} steps of time: leave such forecasts out"
        )
    if seconds is not None:
        _check_elapsed(store, positions, steps, seconds, path)
    if "valid_time" in fc.variables:
        _check_valid_times(fc, store.time[steps], leads, path)
    return steps, leads


def lead_steps(lead: xr.DataArray, store, path) -> tuple[np.ndarray, np.ndarray | None]:
    """(each lead in store steps, each lead in seconds or None when it was given in store steps).

    Integers without units or in `store steps` (what `write_forecast` writes) count store steps; a
    timedelta64 lead, or numbers in time units (`hours`, `h`, `days`), are converted when a whole
    number of the store's usual steps, else refused naming the lead.
    """
    values = lead.values
    label = str(lead.attrs.get("units", "")).strip()
    if values.dtype.kind == "m":
        return _in_steps(values / np.timedelta64(1, "s"), store, path)
    if is_dates(values):  # `hours since ...` decodes to dates
        raise RunError(
            f"{path}: lead holds dates ({values.flat[0]}, ...), not how far ahead: write lead as integers "
            f"in store steps, or as times (timedelta64, or units such as 'hours')"
        )
    if key(label) in STEP_UNITS:
        if values.dtype.kind not in "iu":
            raise RunError(
                f"{path}: lead is {values.dtype}, not a whole number of store steps: write lead as integers "
                f"(1 = one step of the store after the init time)"
            )
        return values.astype(np.int64), None
    seconds_each = scale_to(label, "s")
    if seconds_each is None or values.dtype.kind not in "iuf":
        raise RunError(
            f"{path}: lead is in {label!r}, neither store steps nor a time: write lead as integers in store "
            f"steps (units 'store steps' or none), or as times (timedelta64, or units such as 'hours')"
        )
    return _in_steps(values.astype(np.float64) * seconds_each, store, path)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} hours"


def _in_steps(seconds: np.ndarray, store, path) -> tuple[np.ndarray, np.ndarray]:
    days = as_days(store.time)
    if days is None or days.size < 2:
        raise RunError(
            f"{path}: lead {_hours(seconds[0])} is a time, but {store.path} has no dated steps to count it "
            f"in: write lead as integers in store steps"
        )
    step = float(np.median(np.diff(days))) * 86400.0
    steps = seconds / step
    whole = np.round(steps)
    off = np.flatnonzero(np.abs(steps - whole) > 1e-6 * np.maximum(1.0, np.abs(steps)))
    if off.size:
        raise RunError(
            f"{path}: lead {_hours(seconds[off[0]])} is not a whole number of the store's steps of "
            f"{_hours(step)}: score it against a store with such steps, or write lead in store steps"
        )
    return whole.astype(np.int64), seconds


def _check_elapsed(store, positions: np.ndarray, steps: np.ndarray, seconds: np.ndarray, path) -> None:
    """A lead in time units must be that much time after each init time (in a store of sessions with
    other steps the usual step would count other times)."""
    days = as_days(store.time)
    elapsed = (days[steps] - days[positions][:, None]) * 86400.0
    wrong = np.argwhere(np.abs(elapsed - seconds[None, :]) > 1e-3)
    if wrong.size:
        t, k = wrong[0]
        raise RunError(
            f"{path}: lead {_hours(seconds[k])} from init time {store.time[positions[t]]} is not a step of "
            f"the store (its step {steps[t, k] - positions[t]} later is {_hours(elapsed[t, k])} later): "
            f"write lead in store steps"
        )


def find_steps(store, times: np.ndarray, path, what: str) -> np.ndarray:
    """Positions of `times` in the store's time axis; every one must be there."""
    time = store.time
    order = np.argsort(time, kind="stable")
    try:
        pos = np.clip(np.searchsorted(time[order], times), 0, time.size - 1)
        missing = np.flatnonzero(np.asarray(time[order[pos]] != times))
    except TypeError as exc:  # cftime against datetime64, or dates against numbers
        raise RunError(
            f"{path}: its {what}s ({type(times.flat[0]).__name__}) cannot be compared with the store's "
            f"times ({type(time[0]).__name__}): write them in the store's calendar"
        ) from exc
    if missing.size:
        raise RunError(
            f"{path}: {what} {times[missing[0]]} (and {missing.size - 1} more) is not a step of "
            f"{store.path}: score a forecast against the store it forecasts"
        )
    return order[pos]


def _check_valid_times(fc: xr.Dataset, expected: np.ndarray, leads: np.ndarray, path) -> None:
    valid = fc["valid_time"]
    if set(valid.dims) != {"time", "lead"}:
        raise RunError(f"{path}: valid_time has dims {valid.dims}, expected (time, lead)")
    values = valid.transpose("time", "lead").values
    try:
        wrong = np.argwhere(np.asarray(values != expected))
    except TypeError:
        wrong = np.argwhere(np.ones(expected.shape, dtype=bool))
    if wrong.size:
        t, k = wrong[0]
        raise RunError(
            f"{path}: valid_time {values[t, k]} of (time {fc['time'].values[t]}, lead "
            f"{fc['lead'].values[k]}) is not the store's time {expected[t, k]} {leads[k]} "
            f"steps after it ({len(wrong)} such): write valid_time = time + lead x the store's step"
        )
