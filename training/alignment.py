"""A forecast file's grid and units matched to a store's by values, or refused in one line.

    fc = onto_grid(fc, store, names, path)      # each space dim reordered onto the store's values
    scale, offset = units_of(fc[name], store_units, name, path)

Nothing is matched by position alone: a latitude written south to north (WeatherBench 2, ARCO-ERA5)
or a longitude in -180..180 is reordered onto the store's grid, values equal within `TOLERANCE`; a
grid whose values differ, a part of the grid or another resolution is refused (regrid it first).
Its times are matched in `training.valid_times`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from canonstore.errors import RunError
from canonstore.training.valid_times import truth_steps
from canonstore.training.wb2_layout import to_channels
from canonstore.units import conversion, is_unknown


@dataclass(frozen=True)
class AlignedForecast:
    """A forecast file matched to a store by values: its variables are store channels (in the store's order),
    on the store's grid, converted to the store's units, each (init time, lead) pointing at its store step."""

    path: Path
    fc: xr.Dataset  # on the store's grid (`onto_grid`)
    names: list[str]  # its variables, in the store's channel order
    targets: np.ndarray  # their positions among the store's channels
    units: list[str]  # the store's units of each
    conversions: list[tuple[float, float]]  # (factor, offset): the file's units -> the store's
    truth: np.ndarray  # (init time, lead) -> the store step that forecast is of
    steps_ahead: np.ndarray  # each lead, in store steps
    not_scored: tuple[str, ...] = ()  # the file's variables (`name@level`) that are no store channel

    def physical(self, lead: int, rows: slice) -> np.ndarray:
        """(time, channel, *space) float64: the forecasts of init times `rows` at the `lead`-th lead, in the
        store's units."""
        return np.stack(
            [
                self.fc[n][rows, lead].values.astype(np.float64) * factor + offset
                for n, (factor, offset) in zip(self.names, self.conversions)
            ],
            axis=1,
        )


def open_forecast(path: Path) -> xr.Dataset:
    """The forecast file at `path` as xarray opens it, or one line saying why not."""
    if not path.exists():
        raise RunError(f"{path}: no such forecast file")
    try:
        if path.is_file():  # NetCDF (`--format netcdf`, or any project's)
            return xr.open_dataset(path, chunks=None)
        return xr.open_zarr(path, consolidated=None, chunks=None)
    except (ValueError, KeyError, OSError) as exc:  # zarr and netCDF4 say why in their own words
        raise RunError(f"{path}: not a forecast file xarray can open as Zarr or NetCDF ({exc})") from exc


def align_forecast(path: str | Path, store, rename: dict[str, str] | None = None) -> AlignedForecast:
    """The file at `path` matched to `store` (a Store): variables and levels to channels (`wb2_layout.to_channels`,
    `rename`: {file variable: store variable}), grid, units and valid times by values, never by position."""
    path = Path(path)
    fc, not_scored = to_channels(open_forecast(path), store, path, rename)
    names = sorted(map(str, fc.data_vars), key=store.channels.index)  # the store's order, not the file's
    fc = onto_grid(fc, store, names, path)
    truth, steps_ahead = truth_steps(fc, store, path)
    targets = np.array([store.channels.index(n) for n in names])
    units = [str(u) for u in store.to_xarray()["channel_units"].values[targets]]
    conversions = [units_of(fc[n], u, n, path) for n, u in zip(names, units)]
    return AlignedForecast(path, fc, names, targets, units, conversions, truth, steps_ahead, tuple(not_scored))


TOLERANCE = 1e-3  # coordinate values closer than this are the same point (WeatherBench 2's choice, degrees)
OUTLIER_STDS = 10  # a forecast's mean this many train stds from the store's: its values are in other units


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
    finite = np.isfinite(values)  # NaN and inf are refused where scored, naming the point (`evaluate`)
    seen = float(values[finite].mean()) if finite.any() else mean
    if abs(seen - mean) < OUTLIER_STDS * scale:
        return
    fix = "check its units attribute" if has_units else f"set its units attribute (missing, so taken as {units!r})"
    raise RunError(
        f"{path}: '{name}' has a mean of {seen:.6g} {units}, {abs(seen - mean) / scale:.0f} train stds "
        f"from the store's {mean:.6g}: its values look like other units; {fix}"
    )
