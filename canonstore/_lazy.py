"""Lazy public names for a package (PEP 562): each is imported from its module on first use.

    __getattr__, __dir__ = lazy_names(__name__, {"open_store": "canonstore.formats"})

so that importing the package (or a light module inside it) does not load xarray, zarr or torch.
A name must not be a submodule's name too: importing that submodule would replace the attribute.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_names(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` for `package`, given {public name: defining module}."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        namespace[name] = value  # later lookups find it without coming here
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
