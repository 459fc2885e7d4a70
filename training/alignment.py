"""A forecast file matched to a store by coordinate values, units and times, or refused in one line.

    fc = xr.open_zarr("forecast.zarr")
    fc = onto_grid(fc, store, names, path)      # each space dim reordered onto the store's values
    steps = truth_steps(fc, store, path)        # (time, lead) -> the store step it forecasts
    scale, offset = units_of(fc[name], store, name, path)

Nothing is matched by position alone: a latitude written south to north (WeatherBench 2, ARCO-ERA5)
or a longitude in -180..180 is reordered onto the store's grid, values equal within `TOLERANCE`; a
grid whose values differ, a part of the grid or another resolution is refused (regrid it first).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from canonstore._time import as_days, is_dates
from canonstore.errors import RunError
from canonstore.splits.gaps import segment_ids
from canonstore.units import conversion, is_unknown, key, scale_to

TOLERANCE = 1e-3  # coordinate values closer than this are the same point (WeatherBench 2's choice, degrees)
OUTLIER_STDS = 10  # a forecast's mean this many train stds from the store's: its values are in other units
STEP_UNITS = {"", "storesteps", "storestep", "steps", "step"}  # a lead in these (`units.key`) counts store steps


def grid_coords(ds: xr.Dataset, space_dims: tuple[str, ...]) -> list[str]:
    """The coordinates of `ds` on the grid: one per space dim that has values, then the others
    over space dims only (a curvilinear `latitude(y, x)`, a station's `latitude(location)`)."""
    dims = [d for d in space_dims if d in ds.coords]
    others = [str(c) for c in ds.coords if c not in dims and ds[c].dims and set(ds[c].dims) <= set(space_dims)]
    return dims + others


def onto_grid(fc: xr.Dataset, store, names: list[str], path) -> xr.Dataset:
    """`fc` with each variable's dims in the store's order and each space dim reordered so that its
    coordinate values are the store's; refuses a variable with other dims or a grid that differs."""
    space_dims = tuple(store.dims[2:])
    expected = ("time", "lead") + space_dims
    for n in names:
        if set(fc[n].dims) != set(expected):
            raise RunError(
                f"{path}: '{n}' has dims {dict(fc[n].sizes)}, expected {expected} on the store's grid {store.shape[2:]}"
            )
    fc = fc.transpose(*expected, ...)
    for d, size in zip(space_dims, store.shape[2:]):
        if fc.sizes[d] != size:
            raise RunError(
                f"{path}: {d} has {fc.sizes[d]} points, the store's {size}: a forecast on part of the grid "
                f"or at another resolution is not scored; regrid it onto the store's grid first"
            )
    ours = store.to_xarray()
    for c in grid_coords(ours, space_dims):
        if c not in fc.coords:
            raise RunError(
                f"{path}: no '{c}' coordinate, so its grid cannot be matched to the store's: write the "
                f"store's {c} values with the forecast (a grid is matched by values, never by position)"
            )
        periodic = c == store.longitude
        if c in space_dims:
            order = _order_onto(fc[c].values, ours[c].values, periodic, c, path)
            if (order != np.arange(order.size)).any():  # plain slices read faster: reorder only what needs it
                fc = fc.isel({c: order})
        elif set(fc[c].dims) != set(ours[c].dims):
            raise RunError(
                f"{path}: '{c}' has dims {fc[c].dims}, the store's {ours[c].dims}: write the forecast on "
                f"the store's grid"
            )
        else:
            _check_same(fc[c].transpose(*ours[c].dims).values, ours[c].values, periodic, c, path)
    return fc


def _key(values: np.ndarray, periodic: bool) -> np.ndarray:
    """Values to compare: longitudes on 0..360, with 360 - tolerance and above counted as 0."""
    if not periodic:
        return values
    wrapped = np.mod(values, 360.0)
    return np.where(wrapped > 360.0 - TOLERANCE, wrapped - 360.0, wrapped)


def _distance(a: np.ndarray, b: np.ndarray, periodic: bool) -> np.ndarray:
    d = np.abs(a - b)
    return np.minimum(d, 360.0 - d) if periodic else d


def _order_onto(theirs: np.ndarray, ours: np.ndarray, periodic: bool, name: str, path) -> np.ndarray:
    """Positions in `theirs` of each value of `ours`: a permutation, or refused naming `name`."""
    if theirs.dtype.kind not in "iuf" or ours.dtype.kind not in "iuf":  # labels (station ids): equal or refused
        where = {v: i for i, v in enumerate(theirs.tolist())}
        missing = [v for v in ours.tolist() if v not in where]
        if missing or len(where) != len(theirs):
            raise RunError(
                f"{path}: {name} labels differ from the store's (the store's {missing[:3]} missing, or "
                f"repeated): write the forecast on the store's {name}"
            )
        return np.array([where[v] for v in ours.tolist()])
    a, b = _key(theirs.astype(np.float64), periodic), _key(ours.astype(np.float64), periodic)
    by_a, by_b = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    order = np.empty_like(by_b)
    order[by_b] = by_a
    apart = _distance(a[order], b, periodic)
    if apart.max(initial=0.0) > TOLERANCE:
        raise RunError(
            f"{path}: {name} differs from the store's (max {apart.max():.4g} apart, tolerance "
            f"{TOLERANCE}); regrid the forecast onto the store's grid first"
        )
    return order


def _check_same(theirs: np.ndarray, ours: np.ndarray, periodic: bool, name: str, path) -> None:
    if theirs.dtype.kind not in "iuf" or ours.dtype.kind not in "iuf":
        same = theirs.shape == ours.shape and bool(np.all(theirs == ours))
        apart = "" if same else " (other labels)"
    else:
        d = _distance(_key(theirs.astype(np.float64), periodic), _key(ours.astype(np.float64), periodic), periodic)
        same, apart = d.max(initial=0.0) <= TOLERANCE, f" (max {d.max(initial=0.0):.4g} apart, tolerance {TOLERANCE})"
    if not same:
        raise RunError(
            f"{path}: {name} differs from the store's{apart} once the grid's dims are matched; regrid "
            f"the forecast onto the store's grid first"
        )


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


def units_of(variable: xr.DataArray, ours: str, name: str, path) -> tuple[float, float]:
    """(scale, offset) turning `variable`'s values into `ours`, the store channel's units.

    A file without a `units` attribute is taken to be in the store's units (`check_plausible` catches
    values far from them); a unit that cannot be converted with certainty is refused, naming both, and
    so is any unit against a store channel whose units are unknown (built from a source without them)."""
    theirs = str(variable.attrs.get("units", "")).strip()
    if is_unknown(theirs):
        return 1.0, 0.0
    if is_unknown(ours):
        raise RunError(
            f"{path}: '{name}' is in {theirs!r}, but the store's {name} has no units (its source had no "
            f"units attribute), so no conversion is certain: drop the forecast's units attribute to score "
            f"its values as the store's, or rebuild the store from sources with units"
        )
    convert = conversion(theirs, ours)
    if convert is None:
        raise RunError(
            f"{path}: '{name}' is in {theirs!r}, the store's {name} in {ours!r}, and there is no certain "
            f"conversion between them: write it in {ours!r}"
        )
    return convert


def check_plausible(
    name: str, values: np.ndarray, mean: float, scale: float, units: str, has_units: bool, path
) -> None:
    """Refuse values (converted to the store's `units`) whose mean lies `OUTLIER_STDS` train stds (`scale`)
    or more from the store's train `mean`: a file in other units than it says (or, with no `units`, than assumed)."""
    seen = float(np.nanmean(values)) if np.isfinite(values).any() else mean
    if abs(seen - mean) < OUTLIER_STDS * scale:
        return
    fix = "check its units attribute" if has_units else f"set its units attribute (missing, so taken as {units!r})"
    raise RunError(
        f"{path}: '{name}' has a mean of {seen:.6g} {units}, {abs(seen - mean) / scale:.0f} train stds "
        f"from the store's {mean:.6g}: its values look like other units; {fix}"
    )
