"""Raw sources -> canonical store: recipe, sources, train-only stats, normalise, atomic write.

Imported eagerly (unlike canonstore and canonstore.loaders): `build` is both a function and a submodule, so a
lazy name would be replaced by the module once `canonstore.preprocess.build` is imported; and nothing here
works without xarray anyway. The submodules never import this package itself, only each other.
"""

from canonstore.preprocess.build import build
from canonstore.preprocess.publish import BuildResult
from canonstore.preprocess.recipe import Recipe, load_recipe
from canonstore.preprocess.sources import open_sources

__all__ = ["BuildResult", "Recipe", "build", "load_recipe", "open_sources"]
