"""WeatherBench 2's forecast layout, both ways: a store's target channels as WB2 variables, and back.

    layout = ForecastLayout.of(store, ["z500", "z850", "t2m"])   # geopotential(level), t2m
    layout.dims("geopotential")   # -> ('time', 'prediction_timedelta', 'level', 'latitude', 'longitude')
    channels = to_channels(fc, store, path)                    # a WB2 file as one variable per store channel

WB2's files (`evaluation.py`, its ERA5 and forecast Zarr) have dims `time` (initialisation),
`prediction_timedelta` (timedelta64), `level` (hPa, for variables on levels) and `latitude`, `longitude`
with latitude increasing from -90, and name variables as their sources do. A store keeps its grid as the
sources gave it (often north to south, `lat`/`lon`), so a forecast file's grid is turned into WB2's
(`Grid`), and a WB2 file is matched back to the store's channels by (variable, level) and to its grid
by values (`alignment.onto_grid`). Variables are the same variable when `canonstore.names` says so
(`2m_temperature` and `t2m`), or by a `rename` mapping {file variable: store variable}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from canonstore.errors import RunError
from canonstore.names import short_name
from canonstore.preprocess.channels import LEVEL_DIMS, levels_in_hpa
from canonstore.units import scale_to

LEAD, LEVEL = "prediction_timedelta", "level"
LEVEL_TOLERANCE = 1e-3  # hPa


@dataclass(frozen=True)
class Grid:
    """How the store's space dims become the file's: renamed to latitude/longitude, latitude increasing."""

    store_dims: tuple[str, ...]  # in the store's order
    file_dims: tuple[str, ...]  # in the file's order (latitude before longitude)
    renames: dict[str, str]  # store dim -> file dim
    flip: tuple[str, ...]  # file dims whose store order is reversed (latitude stored north to south)

    @classmethod
    def of(cls, store) -> Grid:
        dims, ds = tuple(store.dims[2:]), store.to_xarray()
        lat, lon = store.latitude, store.longitude
        one_d = lat and lon and ds[lat].dims == (lat,) and ds[lon].dims == (lon,) and {lat, lon} == set(dims)
        if not one_d:  # curvilinear grids, stations: the store's own dims, as they are
            return cls(dims, dims, {d: d for d in dims}, ())
        flip = ("latitude",) if ds[lat].size > 1 and ds[lat].values[0] > ds[lat].values[-1] else ()
        return cls(dims, ("latitude", "longitude"), {lat: "latitude", lon: "longitude"}, flip)

    def coords(self, ds: xr.Dataset) -> dict:
        """The store's grid coordinates in the file's names and order."""
        out = {}
        for c in ds.coords:
            if ds[c].dims and set(ds[c].dims) <= set(self.store_dims) and c not in ("time",):
                v = ds[c].rename({d: self.renames[d] for d in ds[c].dims})
                v = v.rename(self.renames.get(str(c), str(c)))
                out[v.name] = v.isel({d: slice(None, None, -1) for d in self.flip if d in v.dims}).variable
        return out

    def apply(self, values: np.ndarray, leading: int) -> np.ndarray:
        """(..., *store space) values in the file's dim order and direction; `leading` axes come first."""
        order = [self.store_dims.index(d) for d in (self._store_name(f) for f in self.file_dims)]
        values = values.transpose(list(range(leading)) + [leading + i for i in order])
        for d in self.flip:
            values = np.flip(values, axis=leading + self.file_dims.index(d))
        return values

    def _store_name(self, file_dim: str) -> str:
        return {v: k for k, v in self.renames.items()}[file_dim]


@dataclass(frozen=True)
class FileVariable:
    """One variable of a forecast file: the target channels it holds, one per level (-1: no such channel)."""

    name: str
    targets: tuple[int, ...]  # positions among the forecast's target channels
    on_levels: bool


@dataclass(frozen=True)
class ForecastLayout:
    """A store's target channels as WB2 variables: those on levels share one `level` coordinate (hPa)."""

    grid: Grid
    variables: tuple[FileVariable, ...]
    levels: tuple[float, ...]  # the union of every variable's levels, increasing (WB2's order)

    @classmethod
    def of(cls, store, names: list[str]) -> ForecastLayout:
        """Channels grouped by their source variable (`channel_variable`) and level (`channel_level`). A channel
        whose (variable, level) another target shares (NWB electrodes, derived fields) keeps its own name."""
        ds = store.to_xarray()
        index = [store.channels.index(n) for n in names]
        variable = [str(ds["channel_variable"].values[i]) for i in index]
        level = [float(ds["channel_level"].values[i]) for i in index]
        pairs = list(zip(variable, [None if np.isnan(v) else v for v in level]))
        unique = [pairs.count(p) == 1 and p[0] not in names[:k] + names[k + 1 :] for k, p in enumerate(pairs)]
        levels = tuple(sorted({lv for (_, lv), ok in zip(pairs, unique) if ok and lv is not None}))
        grouped: dict[str, list[int]] = {}
        variables = []
        for k, ((var, lv), ok) in enumerate(zip(pairs, unique)):
            if not ok:
                variables.append(FileVariable(names[k], (k,), False))
            elif lv is None:
                variables.append(FileVariable(var, (k,), False))
            else:
                grouped.setdefault(var, [-1] * len(levels))[levels.index(lv)] = k
        variables += [FileVariable(var, tuple(slots), True) for var, slots in grouped.items()]
        taken = [v.name for v in variables]
        if len(set(taken)) != len(taken):  # a surface variable named as a levelled one: keep channel names
            variables = [FileVariable(n, (k,), False) for k, n in enumerate(names)]
            levels = ()
        return cls(Grid.of(store), tuple(variables), levels)

    def dims(self, variable: FileVariable, lead: str = LEAD) -> tuple[str, ...]:
        """`variable`'s dims in the file: (time, lead, [level], *grid), as WB2 orders them."""
        return ("time", lead) + ((LEVEL,) if variable.on_levels else ()) + self.grid.file_dims

    def values(self, variable: FileVariable, forecasts: np.ndarray) -> np.ndarray:
        """(time, lead, [level], *file space) of `variable` from (time, lead, target, *store space) forecasts;
        NaN at a level the store has no channel for."""
        if not variable.on_levels:
            return self.grid.apply(forecasts[:, :, variable.targets[0]], 2)
        out = np.full(forecasts.shape[:2] + (len(variable.targets),) + forecasts.shape[3:], np.nan, forecasts.dtype)
        for slot, target in enumerate(variable.targets):
            if target >= 0:
                out[:, :, slot] = forecasts[:, :, target]
        return self.grid.apply(out, 3)


def to_channels(fc: xr.Dataset, store, path, rename: dict[str, str] | None = None) -> tuple[xr.Dataset, list[str]]:
    """(`fc` with one variable per store channel, named as the store's, dims `time`, `lead` and the store's space
    dims; the file's (variable, level) pairs that are no store channel, said out loud by the caller).

    A variable is a store channel when named as one (`z500`: canonstore's older files), else matched by
    variable (`canonstore.names.short_name`; `rename` {file variable: store variable or channel} first) and by
    level: along a level dim (`preprocess.channels.LEVEL_DIMS`) or a scalar level coordinate, in hPa as the build
    reads them (`levels_in_hpa`). A level canonstore's writer filled with NaN (no such channel in the store it
    wrote from: the variable's `levels_written` attribute) is no forecast. Two file variables for one channel
    are refused."""
    if LEAD in fc.dims and "lead" in fc.dims:
        raise RunError(f"{path}: has both 'lead' and '{LEAD}': keep one")
    if LEAD in fc.dims:
        _check_timedelta(fc[LEAD], path)
        fc = fc.rename({LEAD: "lead"})
    ds = store.to_xarray()
    recipe_rename = yaml_rename(store)
    variable = [short_name(str(v), recipe_rename) for v in ds["channel_variable"].values]
    level = [float(v) for v in ds["channel_level"].values]
    rename = rename or {}
    out, unmatched, source = {}, [], {}

    def channel_of(name: str, lv: float | None) -> str | None:
        wanted = rename.get(name, name)
        if lv is None and wanted in store.channels:
            return wanted
        short = short_name(wanted, recipe_rename)  # the store's spellings: its recipe renamed this source variable
        for c, channel in enumerate(store.channels):
            same_level = np.isnan(level[c]) if lv is None else abs(level[c] - lv) <= LEVEL_TOLERANCE
            if same_level and short == variable[c]:
                return channel
        return None

    def take(name: str, lv: float | None, values: xr.DataArray) -> None:
        label = name if lv is None else f"{name}@{lv:g}hPa"
        found = channel_of(name, lv)
        if found is None:
            unmatched.append(label)
        elif found in out:
            raise RunError(f"{path}: {source[found]} and {label} are both the store's {found}: keep one")
        else:
            out[found], source[found] = values, label

    for name in map(str, fc.data_vars):
        da = fc[name]
        dims = [d for d in da.dims if d in LEVEL_DIMS]
        if not dims:
            scalar = [c for c in LEVEL_DIMS if c in da.coords and da[c].ndim == 0]
            take(name, float(levels_in_hpa(da[scalar[0]])) if scalar else None, da.drop_vars(scalar))
            continue
        written = da.attrs.get("levels_written")
        for k, lv in enumerate(levels_in_hpa(fc[dims[0]])):
            if written is None or any(abs(float(lv) - float(w)) <= LEVEL_TOLERANCE for w in np.atleast_1d(written)):
                take(name, float(lv), da.isel({dims[0]: k}, drop=True))
    if not out:
        raise RunError(
            f"{path}: none of its variables {list(map(str, fc.data_vars))} is a channel of {store.path} "
            f"({store.channels}): name them as the store's channels or variables, or map them with --rename"
        )
    grid = Grid.of(store)
    back = {f: s for s, f in grid.renames.items() if f != s and f in fc.dims and s not in fc.dims}
    result = xr.Dataset(out, attrs=fc.attrs)
    return (result.rename(back) if back else result), unmatched


def _check_timedelta(lead: xr.DataArray, path) -> None:
    """WB2's `prediction_timedelta` is a time (timedelta64, or numbers in time units): plain numbers there are
    hours or steps, nobody can tell which, so they are refused rather than counted as store steps."""
    if lead.dtype.kind == "m" or scale_to(str(lead.attrs.get("units", "")).strip(), "s") is not None:
        return
    raise RunError(
        f"{path}: {LEAD} holds {lead.dtype} without time units ({lead.values[:3].tolist()}, ...), so how far "
        f"ahead each forecast is cannot be told: write it as timedelta64 (or with units such as 'hours'), or "
        f"name the dim 'lead' to count store steps"
    )


def yaml_rename(store) -> dict[str, str]:
    """The `rename:` mapping of the recipe the store was built from (source variable -> short name), if any."""
    import yaml

    try:
        recipe = yaml.safe_load(store.attrs.get("recipe") or "") or {}
    except yaml.YAMLError:
        return {}
    rename = recipe.get("rename") if isinstance(recipe, dict) else None
    return {str(k): str(v) for k, v in rename.items()} if isinstance(rename, dict) else {}
