"""Finding latitude and longitude the CF way (formats/coords.py)."""

import numpy as np
import pytest
import xarray as xr

from canonstore.formats.coords import find_axis, latitude_field, longitude_is_periodic


def coord(dims, values, **attrs):
    return xr.DataArray(np.asarray(values, float), dims=dims, attrs=attrs)


@pytest.mark.parametrize(
    "coords, expected",
    [
        ({"y": coord("y", [0, 1], standard_name="latitude"), "x": coord("x", [0, 1])}, "y"),  # standard_name
        ({"nav": coord("nav", [0, 1], units="degrees_north")}, "nav"),  # units
        ({"j": coord("j", [0, 1], axis="Y")}, "j"),  # axis, no units
        ({"lat": coord("lat", [0, 1])}, "lat"),  # name, last resort
        ({"rlat": coord("rlat", [0, 1], standard_name="grid_latitude", units="degrees")}, None),  # rotated pole
        ({"y": coord("y", [0, 1e5], axis="Y", units="m")}, None),  # projection in metres
        ({"lat": coord("lat", [0, 1], units="m"), "glat": coord("glat", [0, 1], standard_name="latitude")}, "glat"),
    ],
)
def test_latitude_is_found_by_cf_attributes_first(coords, expected):
    assert find_axis(coords, "latitude") == expected


def test_longitude_and_bad_names():
    assert find_axis({"lat": coord("lat", [0]), "lon": coord("lon", [0], units="degrees_east")}, "longitude") == "lon"
    with pytest.raises(ValueError, match="latitude"):
        find_axis({}, "height")


def test_latitude_field_of_1d_and_curvilinear_grids():
    lat1 = coord("lat", [10, 20], standard_name="latitude")
    assert latitude_field(lat1, ("lat", "lon"), (2, 3)).tolist() == [[10, 10, 10], [20, 20, 20]]
    lat2 = coord(("x", "y"), [[1, 2], [3, 4], [5, 6]])  # stored (x, y), grid is (y, x)
    assert latitude_field(lat2, ("y", "x"), (2, 3)).tolist() == [[1, 3, 5], [2, 4, 6]]


@pytest.mark.parametrize(
    "values, periodic",
    [
        (np.arange(1440) * 0.25, True),  # ERA5 0..359.75
        (np.arange(-180, 180, 0.25), True),  # -180..179.75
        (np.arange(64) * 5.625, True),  # WeatherBench 2's 64 columns
        (np.arange(360)[::-1] * 1.0, True),  # descending
        (np.roll(np.arange(0, 360, 30.0), 4), True),  # a rolled global grid: one step wraps through 360
        (np.arange(0, 360, 0.1, dtype=np.float32), True),  # float32 values, 3600 columns
        (np.linspace(-82.958336, -60.04167, 276), False),  # NRCAN's south-east Canada, 23 degrees
        (np.arange(0, 360.01, 0.25), False),  # 0..360: the first column repeated at the end
        (np.arange(1439) * 0.25, False),  # one column missing
        (np.r_[np.arange(0, 180, 1.0), np.arange(180, 360, 2.0)], False),  # not one regular spacing
    ],
)
def test_longitude_is_periodic_only_round_the_globe_at_one_spacing(values, periodic):
    assert longitude_is_periodic(coord("lon", values), ("lat", "lon")) is periodic


def test_a_longitude_not_along_the_last_grid_dim_or_2d_is_not_periodic():
    ring = np.arange(0, 360, 10.0)
    assert not longitude_is_periodic(coord("lon", ring), ("lon", "lat"))  # the grid's first dim
    assert not longitude_is_periodic(xr.DataArray(np.tile(ring, (3, 1)), dims=("y", "x")), ("y", "x"))  # 2-D
    assert not longitude_is_periodic(None, ("lat", "lon"))
