"""Raw sources -> canonical store: recipe, sources, train-only stats, normalise, atomic write."""

from canonstore.preprocess.build import BuildResult, build
from canonstore.preprocess.sources import open_sources
from canonstore.preprocess.recipe import Recipe, load_recipe

__all__ = ["BuildResult", "Recipe", "build", "load_recipe", "open_sources"]
