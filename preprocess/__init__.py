"""Raw sources -> canonical store: recipe, sources, train-only stats, normalise, atomic write."""

from canonstore.preprocess.build import BuildResult, build
from canonstore.preprocess.recipe import Recipe, load_recipe
from canonstore.preprocess.sources import open_sources

__all__ = ["BuildResult", "Recipe", "build", "load_recipe", "open_sources"]
