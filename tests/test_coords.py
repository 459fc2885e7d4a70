"""Finding latitude and longitude the CF way (formats/coords.py)."""

import numpy as np
import pytest
import xarray as xr

from canonstore.formats.coords import find_axis, latitude_field


def coord(dims, values, **attrs):
    return xr.DataArray(np.asarray(values, float), dims=dims, attrs=attrs)


@pytest.mark.parametrize("coords, expected", [
    ({"y": coord("y", [0, 1], standard_name="latitude"), "x": coord("x", [0, 1])}, "y"),       # standard_name
    ({"nav": coord("nav", [0, 1], units="degrees_north")}, "nav"),                              # units
    ({"j": coord("j", [0, 1], axis="Y")}, "j"),                                                 # axis, no units
    ({"lat": coord("lat", [0, 1])}, "lat"),                                                     # name, last resort
    ({"rlat": coord("rlat", [0, 1], standard_name="grid_latitude", units="degrees")}, None),    # rotated pole
    ({"y": coord("y", [0, 1e5], axis="Y", units="m")}, None),                                   # projection in metres
    ({"lat": coord("lat", [0, 1], units="m"), "glat": coord("glat", [0, 1], standard_name="latitude")}, "glat"),
])
def test_latitude_is_found_by_cf_attributes_first(coords, expected):
    assert find_axis(coords, "latitude") == expected


def test_longitude_and_bad_names():
    assert find_axis({"lat": coord("lat", [0]), "lon": coord("lon", [0], units="degrees_east")}, "longitude") == "lon"
    with pytest.raises(ValueError, match="latitude"):
        find_axis({}, "height")


def test_latitude_field_of_1d_and_curvilinear_grids():
    lat1 = coord("lat", [10, 20], standard_name="latitude")
    assert latitude_field(lat1, ("lat", "lon"), (2, 3)).tolist() == [[10, 10, 10], [20, 20, 20]]
    lat2 = coord(("x", "y"), [[1, 2], [3, 4], [5, 6]])          # stored (x, y), grid is (y, x)
    assert latitude_field(lat2, ("y", "x"), (2, 3)).tolist() == [[1, 3, 5], [2, 4, 6]]
