"""The public API (canonstore/__init__.py): light to import, its names loaded on first use."""

import subprocess
import sys

import pytest

HEAVY = ("xarray", "zarr", "torch", "dask", "netCDF4")


def imported_after(statement: str) -> list[str]:
    """The heavy libraries loaded by `statement` in a fresh interpreter."""
    script = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.split()


@pytest.mark.parametrize("statement", ["import canonstore.errors", "import canonstore", "import canonstore.loaders"])
def test_importing_the_package_loads_no_heavy_library(statement):
    assert imported_after(statement) == []


def test_names_load_on_first_use():
    opened = imported_after("import canonstore; canonstore.open_store")
    assert {"xarray", "zarr"} <= set(opened) and "torch" not in opened
    assert "torch" in imported_after("import canonstore.loaders; canonstore.loaders.BatchLoader")


def test_version_and_names_are_listed():
    import canonstore

    assert isinstance(canonstore.__version__, str)
    assert {"open_store", "__version__"} <= set(dir(canonstore)) and "open_store" in canonstore.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        canonstore.nope  # noqa: B018
