import re

import pytest

from canonstore.errors import RecipeError
from canonstore.preprocess import load_recipe
from tests.helpers import ROOT, UNQUOTED, demo_recipe, monthly_360_day, write_recipe


def test_the_repository_demo_recipe_parses():
    demo = ROOT / "recipes" / "demo.yaml"
    if not (demo.parent.parent / "data" / "raw" / "demo").is_dir():
        pytest.skip("demo raw data not generated yet (make data)")
    recipe = load_recipe(demo)
    assert recipe.name == "demo" and recipe.static == ("lsm", "orography")


def test_valid_recipe_resolves_globs_relative_to_the_recipe(tmp_path, tiny_raw):
    recipe = load_recipe(demo_recipe(tmp_path, tiny_raw))
    assert len(recipe.sources) == 7 * 3 + 1  # 7 variables x 3 years + static.nc
    assert recipe.splits == {
        "by": "year",
        "embargo": 2,
        "train": [2000, 2000],
        "val": [2001, 2001],
        "test": [2002, 2002],
    }
    assert len(recipe.sha256) == 64


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"colour": "blue"}, "unknown key(s) ['colour']"),
        ({"storage": {"dtype": "float32", "chunks": 3}}, "unknown key(s) in 'storage': ['chunks']"),
        ({"storage": {"dtype": "int8"}}, "'storage.dtype' must be one of"),
        ({"nan_policy": "drop"}, "'nan_policy' must be one of ['error', 'fill']"),
        ({"variables": "z"}, "'variables' must be a list"),
        ({"splits": {"train": [2001, 2000]}}, "splits.train starts after it ends"),
        ({"splits": {"train": [2000, 2001], "test": [2001, 2002]}}, "overlaps or precedes splits.train"),
        ({"splits": {"val": [2000, 2001]}}, "needs a 'train' range"),
        ({"splits": {"train": [2000, 2001], "embargo": -1}}, "embargo must be a whole number"),
        ({"splits": {"train": ["2000", 2001]}}, "splits.train must be [first, last]"),
        ({"time": {"start": "yesterday"}}, "'time.start' must be a date"),
    ],
)
def test_bad_recipes_are_rejected_naming_the_key(tmp_path, tiny_raw, keys, message):
    with pytest.raises(RecipeError, match="recipe .*") as err:
        load_recipe(demo_recipe(tmp_path, tiny_raw, **keys))
    assert message in str(err.value)


def test_missing_source_is_named(tmp_path):
    path = write_recipe(tmp_path, sources=["nowhere/*.nc"], splits={"train": [2000, 2001]})
    with pytest.raises(RecipeError, match=r"source 'nowhere/\*\.nc' matches no file"):
        load_recipe(path)


def test_missing_required_key(tmp_path):
    path = write_recipe(tmp_path, splits={"train": [2000, 2001]})
    with pytest.raises(RecipeError, match="missing required key 'sources'"):
        load_recipe(path)


def test_unquoted_360_day_dates_are_text_and_the_data_calendar_reads_them(tmp_path):
    from canonstore import open_store
    from canonstore.preprocess import build

    monthly_360_day(tmp_path / "tas.nc")
    (tmp_path / "hadgem.yaml").write_text(UNQUOTED)  # 2030-02-30 is no date to YAML's timestamp rule
    recipe = load_recipe(tmp_path / "hadgem.yaml")
    assert (recipe.time_start, recipe.time_end) == ("2005-01-01", "2031-02-30")
    assert recipe.splits["train"] == ["2005-01-01", "2030-02-30"]
    store = open_store(build(recipe.path, tmp_path / "hadgem.zarr", progress=False).path)
    assert store.time[-1].strftime("%Y-%m-%d") == "2031-02-16" and store.time[0].calendar == "360_day"
    train, test = store.split_indices("train"), store.split_indices("test")
    assert store.time[train[-1]].strftime("%Y-%m") == "2030-02" and store.time[test[0]].strftime("%Y-%m") == "2030-03"
    assert train.size == 25 * 12 + 2 and test.size == 12


def test_a_date_the_data_calendar_lacks_is_one_line_naming_it(tmp_path):
    from canonstore.errors import SourceError
    from canonstore.preprocess import open_sources

    monthly_360_day(tmp_path / "tas.nc")
    (tmp_path / "hadgem.yaml").write_text(UNQUOTED.replace("end: 2031-02-30", "end: 2031-02-31"))
    with pytest.raises(
        SourceError,
        match=r"'time' 2005-01-01\.\.2031-02-31 is not a range of dates in the sources' "
        r"calendar \(360_day\)",
    ):
        open_sources(load_recipe(tmp_path / "hadgem.yaml"))


def test_utc_times_with_their_mark_select_what_they_name_and_other_offsets_are_refused(tmp_path):
    """`2005-03-16T00:00:00Z` unquoted (YAML's timestamp, a date with a time zone until dates became text) was
    refused in `time` and in date splits; a UTC mark is the sources' own time, any other offset is one line."""
    from canonstore import open_store
    from canonstore.preprocess import build

    monthly_360_day(tmp_path / "tas.nc")
    utc = UNQUOTED.replace("start: 2005-01-01", "start: 2005-03-16T00:00:00Z").replace(
        "test: [2030-03-01, 2031-02-30]", "test: [2030-03-16T00:00+00:00, '2031-02-30 00:00z']"
    )
    (tmp_path / "hadgem.yaml").write_text(utc)
    recipe = load_recipe(tmp_path / "hadgem.yaml")
    assert recipe.time_start == "2005-03-16T00:00:00"
    assert recipe.splits["test"] == ["2030-03-16T00:00", "2031-02-30T00:00"]
    store = open_store(build(recipe.path, tmp_path / "hadgem.zarr", progress=False).path)
    assert store.time[0].strftime("%Y-%m-%d %H") == "2005-03-16 00"  # from March: 00:00Z is the step's 00:00
    assert store.time[store.split_indices("test")[0]].strftime("%Y-%m") == "2030-03"
    for utc_text, offset in (
        ("start: 2005-03-16T00:00:00Z", "2005-03-16T00:00:00+05:30"),
        ("2030-03-16T00:00+00:00", "2030-03-16T00:00-03:00"),
    ):
        (tmp_path / "bad.yaml").write_text(utc.replace(utc_text, utc_text.replace(utc_text.split()[-1], offset)))
        with pytest.raises(RecipeError, match=f"'{re.escape(offset)}' is not in UTC .*write the time in UTC"):
            load_recipe(tmp_path / "bad.yaml")
