"""`canonstore inspect`: the summary's channel table."""

from canonstore import open_store
from canonstore.formats.summary import describe
from canonstore.preprocess import build
from tests.helpers import days, nc, write_recipe


def test_long_channel_names_never_run_into_their_units(tmp_path):
    nc(tmp_path / "gsl.nc", days("2000-01-01", 30), var="growing_season_length", units="days")
    recipe = write_recipe(tmp_path, sources=["gsl.nc"], splits={"by": "index", "train": [0, 19], "test": [20, 29]})
    text = describe(open_store(build(recipe, tmp_path / "gsl.zarr", progress=False).path))
    lines = text.splitlines()
    header = next(line for line in lines if line.strip().startswith("name"))
    row = next(line for line in lines if "growing_season_length" in line)
    assert "growing_season_length  days" in row  # two spaces at least, not growing_season_lengthdays
    assert row.index("days") == header.index("units")  # the units column lines up with its header
