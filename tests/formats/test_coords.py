"""Finding latitude and longitude the CF way (formats/coords.py)."""

import numpy as np
import pytest
import xarray as xr

from canonstore.formats.coords import find_axis, latitude_cell_areas, latitude_field, longitude_is_periodic


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


def _wb2_cell_areas(lat):
    """WeatherBench 2's _cell_area_from_latitude (metrics.py): edges midway and at the poles, increasing rows."""
    x = np.deg2rad(lat)
    bounds = np.concatenate([[-np.pi / 2], (x[:-1] + x[1:]) / 2, [np.pi / 2]])
    return np.sin(bounds[1:]) - np.sin(bounds[:-1])


@pytest.mark.parametrize(
    "lat",
    [np.linspace(-90, 90, 32), np.arange(-88.59375, 90, 2.8125), np.linspace(-87.86, 87.86, 64)],
    ids=["with-poles-64x32", "without-poles-5.625", "gaussian-like"],
)
def test_global_grids_get_weatherbench2s_cell_areas_in_either_order(lat):
    assert np.allclose(latitude_cell_areas(lat), _wb2_cell_areas(lat), rtol=1e-12)
    assert np.allclose(latitude_cell_areas(lat[::-1]), _wb2_cell_areas(lat)[::-1], rtol=1e-12)  # north to south
    assert latitude_cell_areas(lat).sum() == pytest.approx(2.0)  # the whole sphere, from pole to pole


def test_a_regional_grid_is_not_stretched_to_the_poles():
    lat = np.arange(40.0, 55.0, 1.0)
    areas = latitude_cell_areas(lat)
    expected = np.sin(np.deg2rad(lat + 0.5)) - np.sin(np.deg2rad(lat - 0.5))  # each row half a degree either side
    assert np.allclose(areas, expected, rtol=1e-12)
    assert areas[0] / areas[1] == pytest.approx(np.cos(np.deg2rad(40)) / np.cos(np.deg2rad(41)), rel=1e-3)
