"""The source interface every raw file format implements, and the registry that picks a format for a file.

In the spirit of xarray's backends: one small module per format (`netcdf_`, `grib_`, `nwb_`, `zarr_source`) implements
`SourceModule` and registers itself at import (`register("grib", sys.modules[__name__])`); `sources`
imports each once, so that every kind is registered before a file is opened. Everything that is not
format-specific (the time axis, grids, channels) is written once, above this interface.

    kind_of(Path("era5.grib"))                # -> 'grib': by signature first, then suffix
    registered()                              # -> {'nwb': <module nwb_>, 'grib': ..., 'netcdf': ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from canonstore.errors import SourceError, first_line  # noqa: F401  (the source modules import it from here)
from canonstore.remote import is_url

if TYPE_CHECKING:
    import xarray as xr

    from canonstore.preprocess.recipe import Recipe

HEAD_BYTES = 16  # what `recognises` is shown of a file: enough for every signature the formats check


class SourceModule(Protocol):
    """What one source format gives: its files recognised, and opened lazily as xarray Datasets in CF terms.

    Each Dataset of `open_parts` must be lazy (nothing read beyond coordinates; `Sources.read` slices it per
    block) and say, in CF terms, what the rest of canonstore reads:
    - a time dimension: a coordinate with `standard_name: time`, `axis: T` or a datetime dtype (or the
      dimension the recipe names in `time_dim`), as datetime64 (NetCDF and GRIB: seconds) or cftime dates;
    - grid dimensions with their coordinates (latitude/longitude found by `formats.coords.find_axis`);
    - levels on a dimension of `channels.LEVEL_DIMS` (pressure levels with `units`), or a scalar level
      coordinate; channels with their own names on a `channel` dimension (`channels.CHANNEL_DIMS`);
    - `units` on every data variable (CF spelling; '' when the file gives none);
    - optionally `attrs["canonstore_session"]`: the session the file holds (one file per session, NWB).
    A file that cannot be opened raises SourceError with one line naming the file (see `first_line`).
    `Sources.close()` closes every Dataset; the module frees its handles through `Dataset.set_close`.
    """

    SUFFIXES: tuple[str, ...]  # file name endings of the format, lower case (".grib", ...)

    def recognises(self, path: Path, head: bytes) -> bool:
        """Whether `path` is a file of this format, by its first `HEAD_BYTES` bytes `head` or its suffix."""
        ...

    def open_parts(self, path: Path, recipe: Recipe) -> list[xr.Dataset]:
        """The file as lazy Datasets: one per hypercube it holds (a GRIB file can hold several)."""
        ...


_MODULES: dict[str, SourceModule] = {}
_fallback: str | None = None  # the kind that reads what no other kind recognises (NetCDF: xarray's own error)


def register(kind: str, module: SourceModule, *, fallback: bool = False) -> None:
    """Make `module` the reader of `kind`. Kinds are asked in the order registered; a `fallback` kind
    last, and it reads any file no other kind recognises (its own open then says what is wrong)."""
    global _fallback
    if kind in _MODULES and _MODULES[kind] is not module:
        raise ValueError(f"source kind '{kind}' is registered already, by {_MODULES[kind]!r}")
    if fallback and _fallback not in (None, kind):
        raise ValueError(f"source kind '{_fallback}' is the fallback already; '{kind}' cannot be one too")
    _MODULES[kind] = module
    if fallback:
        _fallback = kind


def registered() -> dict[str, SourceModule]:
    """Every registered kind and its module, in the order `kind_of` asks them (the fallback last)."""
    order = [k for k in _MODULES if k != _fallback] + ([] if _fallback is None else [_fallback])
    return {kind: _MODULES[kind] for kind in order}


def kind_of(path: Path) -> str:
    """Which source module reads `path`: by signature first, then suffix; the fallback when nothing else claims it.
    A folder or an object-storage URL (a Zarr store) has no signature to read: its `head` is empty."""
    if is_url(path) or Path(path).is_dir():
        head = b""
    else:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    for kind, module in _MODULES.items():
        if kind != _fallback and module.recognises(path, head):
            return kind
    if _fallback is None:
        raise SourceError(f"{path}: no source format recognises it (registered: {sorted(_MODULES)})")
    return _fallback


def module_of(kind: str) -> SourceModule:
    """The module registered for `kind`."""
    return _MODULES[kind]


def open_parts(path: Path, recipe: Recipe) -> list[xr.Dataset]:
    """One file as lazy Datasets, by the module that reads its kind."""
    return _MODULES[kind_of(path)].open_parts(path, recipe)
