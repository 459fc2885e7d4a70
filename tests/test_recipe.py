from pathlib import Path

import pytest

from canonstore.errors import RecipeError
from canonstore.preprocess import load_recipe
from tests.conftest import demo_recipe, write_recipe


def test_the_repository_demo_recipe_parses():
    demo = Path(__file__).parents[1] / "recipes" / "demo.yaml"
    if not (demo.parent.parent / "data" / "raw" / "demo").is_dir():
        pytest.skip("demo raw data not generated yet (make data)")
    recipe = load_recipe(demo)
    assert recipe.name == "demo" and recipe.static == ("lsm", "orography")


def test_valid_recipe_resolves_globs_relative_to_the_recipe(tmp_path, tiny_raw):
    recipe = load_recipe(demo_recipe(tmp_path, tiny_raw))
    assert len(recipe.sources) == 7 * 3 + 1  # 7 variables x 3 years + static.nc
    assert recipe.splits == {"by": "year", "embargo": 2, "train": [2000, 2000], "val": [2001, 2001],
                             "test": [2002, 2002]}
    assert len(recipe.sha256) == 64


@pytest.mark.parametrize("keys, message", [
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
])
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
