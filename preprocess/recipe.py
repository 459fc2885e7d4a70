"""Read and check a dataset recipe (YAML) before any work is done.

A recipe is the whole description of a store; README.md documents every key:

    name: canesm5-snow
    sources: [../data/raw/*.nc]          # relative to the recipe file
    variables: [prsn, snw]
    splits: {train: [1991, 2004], val: [2005, 2007], test: [2008, 2010], embargo: 1}
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from canonstore.errors import RecipeError
from canonstore.preprocess.derived import KINDS
from canonstore.remote import URL, is_url, is_zarr_dir
from canonstore.splits import parse_split_rule
from canonstore.splits.rules import without_utc

KEYS = {
    "name",
    "sources",
    "variables",
    "levels",
    "static",
    "derived",
    "time",
    "time_dim",
    "series",
    "splits",
    "nan_policy",
    "on_duplicate_time",
    "time_gaps",
    "storage",
    "rename",
}
STORAGE_KEYS = {"dtype", "shard_mb", "compression"}
DTYPES = ("float32", "float16")
COMPRESSIONS = ("none", "zstd", "blosc")


class _TextDates(yaml.SafeLoader):
    """YAML with dates left as text: its timestamp rule builds a `datetime.date` in the standard
    calendar, which fails on 2030-02-30 (a 360_day date) and misreads noleap data; the sources'
    calendar decides what a date means."""


_TextDates.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(text: str):
    """A recipe's YAML, dates as text (`2005-01-01` -> '2005-01-01', quoted or not); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_TextDates)


@dataclass(frozen=True)
class Recipe:
    """A checked recipe. `text` is the file verbatim; `sha256` identifies it in provenance."""

    path: Path
    text: str
    name: str
    sources: tuple[Path | URL, ...]  # files, Zarr folders, and Zarr stores on object storage (`URL`, text)
    splits: dict
    variables: tuple[str, ...] | None = None
    levels: dict = field(default_factory=dict)
    static: tuple[str, ...] = ()
    derived: tuple[dict, ...] = ()  # channels computed at build time (preprocess.derived)
    time_start: str | None = None
    time_end: str | None = None
    time_dim: str | None = None  # None: found the CF way (timeaxis.find_time_dim)
    series: str | None = None  # NWB: the TimeSeries to store, e.g. acquisition/ElectricalSeries
    nan_policy: str = "error"
    on_duplicate_time: str = "error"
    time_gaps: str = "error"
    dtype: str = "float32"
    shard_mb: float = 1024.0
    compression: str = "none"
    rename: dict = field(default_factory=dict)  # source variable -> channel name stem (`canonstore.names`)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check the recipe at `path`; raise RecipeError naming the key or file at fault."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path}: no such file")
    text = path.read_text()
    try:
        raw = read_yaml(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML: {exc}") from None
    where = f"recipe {path}"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = set(raw) - KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys are {sorted(KEYS)}")
    for key in ("name", "sources", "splits"):
        if key not in raw:
            raise RecipeError(f"{where}: missing required key '{key}'")

    name = _parse_str(raw["name"], "name", where)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise RecipeError(f"{where}: name must be letters, digits, '.', '_' or '-', got {name!r}")
    storage = raw.get("storage") or {}
    if not isinstance(storage, dict):
        raise RecipeError(f"{where}: 'storage' must be a mapping, got {type(storage).__name__}")
    if set(storage) - STORAGE_KEYS:
        raise RecipeError(
            f"{where}: unknown key(s) in 'storage': {sorted(set(storage) - STORAGE_KEYS)}; "
            f"valid keys are {sorted(STORAGE_KEYS)}"
        )
    time = raw.get("time") or {}
    if not isinstance(time, dict) or set(time) - {"start", "end"}:
        raise RecipeError(f"{where}: 'time' must be a mapping with 'start' and/or 'end', got {time!r}")
    levels = raw.get("levels") or {}
    if not isinstance(levels, dict) or not all(isinstance(v, list) and v for v in levels.values()):
        raise RecipeError(f"{where}: 'levels' must map variable -> non-empty list of levels, got {levels!r}")
    shard_mb = storage.get("shard_mb", 1024)
    if not isinstance(shard_mb, (int, float)) or isinstance(shard_mb, bool) or shard_mb <= 0:
        raise RecipeError(f"{where}: storage.shard_mb must be a positive number, got {shard_mb!r}")

    return Recipe(
        path=path,
        text=text,
        name=name,
        sources=_resolve_sources(raw["sources"], path.parent, where),
        splits=parse_split_rule(raw["splits"], where),
        variables=_parse_names(raw.get("variables"), "variables", where),
        levels={str(k): [float(x) for x in v] for k, v in levels.items()},
        static=_parse_names(raw.get("static"), "static", where) or (),
        derived=_parse_derived(raw.get("derived"), where),
        time_start=_parse_date(time.get("start"), "time.start", where),
        time_end=_parse_date(time.get("end"), "time.end", where),
        time_dim=None if raw.get("time_dim") is None else _parse_str(raw["time_dim"], "time_dim", where),
        series=None if raw.get("series") is None else _parse_str(raw["series"], "series", where).strip("/"),
        nan_policy=_parse_choice(raw.get("nan_policy", "error"), ("error", "fill"), "nan_policy", where),
        on_duplicate_time=_parse_choice(
            raw.get("on_duplicate_time", "error"), ("error", "keep_first"), "on_duplicate_time", where
        ),
        time_gaps=_parse_choice(raw.get("time_gaps", "error"), ("error", "allow"), "time_gaps", where),
        dtype=_parse_choice(storage.get("dtype", "float32"), DTYPES, "storage.dtype", where),
        shard_mb=float(shard_mb),
        compression=_parse_choice(
            str(storage.get("compression", "none")).lower(), COMPRESSIONS, "storage.compression", where
        ),
        rename=_parse_rename(raw.get("rename"), where),
    )


def _parse_rename(value: object, where: str) -> dict[str, str]:
    """`rename: {2m_temperature: t2m}`: the name a source variable's channels take (before their level)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: 'rename' must map source variable -> channel name, got {value!r}")
    for k, v in value.items():
        if not isinstance(k, str) or not k or not isinstance(v, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", v):
            raise RecipeError(f"{where}: 'rename' {k!r}: expected a channel name of letters, digits and '_', got {v!r}")
    return dict(value)


def _parse_derived(value: object, where: str) -> tuple[dict, ...]:
    """`derived:` entries: {name, kind, the kind's inputs, optional levels}; checked before any data is read."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecipeError(f"{where}: 'derived' must be a list of {{name, kind, ...}} mappings, got {value!r}")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
            raise RecipeError(f"{where}: each 'derived' entry needs kind: one of {sorted(KINDS)}; got {entry!r}")
        needed = ("name",) + KINDS[entry["kind"]]
        allowed = set(needed) | ({"kind", "levels"} if entry["kind"] in ("column", "layer_mean") else {"kind"})
        missing, unknown = [k for k in needed if k not in entry], sorted(set(entry) - allowed)
        if missing or unknown:
            raise RecipeError(
                f"{where}: derived {entry.get('name', entry)!r} ({entry['kind']}): "
                f"missing {missing}, unknown {unknown}; it takes {sorted(allowed)}"
            )
        for key in needed:
            _parse_str(entry[key], f"derived.{key}", where)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", entry["name"]):
            raise RecipeError(f"{where}: derived name must be letters, digits and '_', got {entry['name']!r}")
        if "levels" in entry and (
            not isinstance(entry["levels"], list)
            or len(entry["levels"]) < 2
            or not all(isinstance(v, (int, float)) for v in entry["levels"])
        ):
            raise RecipeError(
                f"{where}: derived {entry['name']!r}: levels must be a list of two or more "
                f"pressures in hPa, got {entry['levels']!r}"
            )
        out.append(dict(entry))
    return tuple(out)


def _parse_str(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _parse_choice(value: object, choices: tuple[str, ...], key: str, where: str) -> str:
    if value not in choices:
        raise RecipeError(f"{where}: '{key}' must be one of {list(choices)}, got {value!r}")
    return value


def _parse_names(value: object, key: str, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RecipeError(f"{where}: '{key}' must be a list of variable names, got {value!r}")
    return tuple(value)


def _parse_date(value: object, key: str, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, int):
        return str(value)
    text = without_utc(value, f"{where}: '{key}'") if isinstance(value, str) else None  # 06:00Z is 06:00
    if text is not None and re.fullmatch(r"\d{4}(-\d{2}(-\d{2}([T ][\d:]+)?)?)?", text):
        return text
    raise RecipeError(f"{where}: '{key}' must be a date like 1991-01-01, got {value!r}")


def source_patterns(recipe: Recipe) -> list[tuple[str, Path]]:
    """(entry as written, absolute glob) for each of the recipe's `sources` (relative to its folder)."""
    value = read_yaml(recipe.text)["sources"]
    return [
        (entry, Path(os.path.abspath(recipe.path.parent / entry)))
        for entry in ([value] if isinstance(value, str) else value)
        if not is_url(entry)  # object storage: no local file of the build's can be among them
    ]


# File formats that are not read from object storage (Zarr is: a store is many small objects, read by range).
FILE_SUFFIXES = (".nc", ".nc4", ".cdf", ".netcdf", ".h5", ".hdf5", ".grib", ".grib2", ".grb", ".grb2", ".nwb")


def _resolve_url(entry: str, where: str) -> URL:
    """An object-storage source: one Zarr store, never a glob or a NetCDF/GRIB/NWB file."""
    url = URL(entry.rstrip("/"))
    if re.search(r"[*?[]", entry) or url.suffix.lower() in FILE_SUFFIXES:
        raise RecipeError(
            f"{where}: source {entry!r}: NetCDF, GRIB and NWB files are not read from object storage; "
            "use a Zarr source (s3://bucket/path/name.zarr) or copy the files locally"
        )
    return url


def _resolve_sources(value: object, base: Path, where: str) -> tuple[Path | URL, ...]:
    """Expand globs relative to the recipe's folder; every entry must match at least one file or Zarr folder.
    `s3://` entries are Zarr stores on object storage, kept as text (`URL`)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{where}: 'sources' must be a list of paths or globs, got {value!r}")
    found: dict[Path, None] = {}  # ordered and O(1) membership: thousands of files are common
    for entry in value:
        if is_url(entry):
            found[_resolve_url(entry, where)] = None
            continue
        pattern = Path(entry) if Path(entry).is_absolute() else base / entry
        matches = sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file() or is_zarr_dir(p))
        if not matches:
            folder = [p for p in glob.glob(str(pattern)) if Path(p).is_dir()]
            hint = f"; {folder[0]} is a folder without Zarr metadata (zarr.json, .zgroup)" if folder else ""
            raise RecipeError(f"{where}: source {entry!r} matches no file or Zarr store (looked for {pattern}){hint}")
        found.update(dict.fromkeys(matches))
    return tuple(found)
