"""`canonstore inspect`: the summary's channel table."""

import datetime as dt

import numpy as np
import pytest

from canonstore import open_store
from canonstore.formats.summary import describe
from canonstore.preprocess import build
from tests.helpers import NI, NJ, days, nc, write_grib, write_recipe


def test_long_channel_names_never_run_into_their_units(tmp_path):
    nc(tmp_path / "gsl.nc", days("2000-01-01", 30), var="growing_season_length", units="days")
    recipe = write_recipe(tmp_path, sources=["gsl.nc"], splits={"by": "index", "train": [0, 19], "test": [20, 29]})
    text = describe(open_store(build(recipe, tmp_path / "gsl.zarr", progress=False).path))
    lines = text.splitlines()
    header = next(line for line in lines if line.strip().startswith("name"))
    row = next(line for line in lines if "growing_season_length" in line)
    assert "growing_season_length  days" in row  # two spaces at least, not growing_season_lengthdays
    assert row.index("days") == header.index("units")  # the units column lines up with its header


def test_a_time_axis_without_a_stated_calendar_is_shown_as_the_standard_one(tmp_path):
    """GRIB times carry no calendar attribute: `inspect` said `calendar None`."""
    pytest.importorskip("eccodes")
    start = dt.datetime(2000, 1, 1)
    fields = [("2t", None, start + dt.timedelta(days=d), 0, np.full((NJ, NI), 280.0 + d)) for d in range(20)]
    write_grib(tmp_path / "t2m.grib", fields)
    recipe = write_recipe(tmp_path, sources=["t2m.grib"], splits={"by": "index", "train": [0, 14], "test": [15, 19]})
    text = describe(open_store(build(recipe, tmp_path / "g.zarr", progress=False).path))
    assert "calendar standard (the sources state none)," in text and "None" not in text
