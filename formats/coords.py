"""Which coordinate is latitude (and longitude), found the CF way and recorded once at build time.

    find_axis({"lat": ds.lat, "lon": ds.lon}, "latitude")        # -> "lat"
    longitude_is_periodic(ds.lon, ("lat", "lon"))                 # -> True on a global grid

CF conventions (https://cfconventions.org/, section 4.1) say a coordinate is latitude when its
`standard_name` is `latitude`, or its `units` are degrees_north (and its spellings), or its `axis`
is Y; names like `lat` are only a last resort. Rotated-pole coordinates (`grid_latitude`) are not
geographic latitude and are never taken for it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_UNITS = {
    "latitude": ("degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"),
    "longitude": ("degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"),
}
_AXIS = {"latitude": "Y", "longitude": "X"}
_NAMES = {
    "latitude": ("latitude", "lat", "nav_lat", "xlat", "lat_rho", "yc"),
    "longitude": ("longitude", "lon", "nav_lon", "xlong", "lon_rho", "xc"),
}
_DEGREES = ("degree", "degrees", "deg", "")  # an axis: Y coordinate in metres is a projection, not latitude


def find_axis(coords: Mapping, which: str) -> str | None:
    """Name of the coordinate in `coords` (name -> DataArray) that is `which` ("latitude" or "longitude").

    Tried in CF order: standard_name, units, axis (with degree or no units), then common names.
    None when nothing qualifies.
    """
    if which not in _UNITS:
        raise ValueError(f"expected 'latitude' or 'longitude', got {which!r}")

    def attr(coord, key: str) -> str:
        return str(coord.attrs.get(key, "")).strip().lower()

    rules = (
        lambda n, c: attr(c, "standard_name") == which,
        lambda n, c: attr(c, "units") in _UNITS[which],
        lambda n, c: attr(c, "axis") == _AXIS[which].lower() and attr(c, "units") in _UNITS[which] + _DEGREES,
        lambda n, c: str(n).lower() in _NAMES[which] and attr(c, "units") in _UNITS[which] + _DEGREES,
    )
    for rule in rules:
        hits = [name for name, coord in coords.items() if rule(name, coord)]
        if hits:
            return str(hits[0])
    return None


def latitude_field(coord, space_dims: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    """The latitude (degrees) of every cell of a grid with dims `space_dims` and `shape`.

    A 1-D latitude along one of the grid's dims is broadcast along the others; a 2-D (curvilinear)
    latitude is taken as it is, transposed to the grid's order.
    """
    if coord.ndim == 1 and coord.dims[0] in space_dims:
        along = [1] * len(space_dims)
        along[space_dims.index(coord.dims[0])] = -1
        return np.broadcast_to(np.asarray(coord.values, dtype=np.float64).reshape(along), shape)
    if set(coord.dims) == set(space_dims):
        return np.asarray(coord.transpose(*space_dims).values, dtype=np.float64)
    raise ValueError(f"latitude coordinate '{coord.name}' has dims {coord.dims}, not the grid's {space_dims}")


def longitude_is_periodic(coord, space_dims: tuple[str, ...]) -> bool:
    """Whether the grid wraps around in longitude (FORMAT.md, "Latitude"): `coord` is a 1-D longitude along
    the last of `space_dims` whose n values step regularly (modulo 360, either direction; every step within
    1% of their mean d) and go round the globe: n x d = 360 within 0.1 d. Regional, 2-D, a repeated seam
    (0..360) or no longitude at all: False."""
    if coord is None or coord.ndim != 1 or not space_dims or coord.dims[0] != space_dims[-1] or coord.size < 2:
        return False
    values = np.asarray(coord.values, dtype=np.float64)
    if not np.isfinite(values).all():
        return False
    for sign in (1, -1):
        steps = np.mod(sign * np.diff(values), 360.0)
        spacing = steps.mean()
        if (
            spacing > 0
            and np.all(np.abs(steps - spacing) <= 0.01 * spacing)
            and abs(values.size * spacing - 360.0) <= 0.1 * spacing
        ):
            return True
    return False


def latitude_cell_areas(latitude: np.ndarray) -> np.ndarray:
    """Each row's share of the sphere, sin(upper edge) - sin(lower edge), as WeatherBench 2 weighs grid cells.

    Edges are midway between rows; the outer edges are the poles on a grid that reaches within one row
    spacing of them (WB2's `_latitude_cell_bounds`, so a global grid gets WB2's weights exactly), else half a
    spacing beyond the outer rows (a regional grid's edge rows are not stretched to the poles). Rows in any
    order (north to south included); weights come back in the rows' order. One row: cos(latitude).
    """
    lat = np.asarray(latitude, dtype=np.float64)
    if lat.size < 2:
        return np.cos(np.deg2rad(lat))
    order = np.argsort(lat)
    x = np.deg2rad(lat[order])
    low, high = x[0] - (x[1] - x[0]) / 2, x[-1] + (x[-1] - x[-2]) / 2
    low = -np.pi / 2 if x[0] - (x[1] - x[0]) <= -np.pi / 2 else max(low, -np.pi / 2)
    high = np.pi / 2 if x[-1] + (x[-1] - x[-2]) >= np.pi / 2 else min(high, np.pi / 2)
    edges = np.concatenate([[low], (x[:-1] + x[1:]) / 2, [high]])
    areas = np.empty_like(x)
    areas[order] = np.sin(edges[1:]) - np.sin(edges[:-1])
    return areas
