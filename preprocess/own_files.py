"""Refuse a recipe whose source globs reach the build's own files: its store, staging, lock, log or old copy."""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from canonstore.atomic import MARKER
from canonstore.errors import RecipeError
from canonstore.formats.manifest import MANIFEST
from canonstore.preprocess.recipe import Recipe, source_patterns
from canonstore.preprocess.staging import MARKERS, PROGRESS, staging_path


def refuse_output_among_sources(recipe: Recipe, out: Path) -> None:
    """A store's own files (itself, its lock, log, staging) must never be inputs of its build: refuse an
    output that a source glob reaches (`--out raw/x.zarr` with `sources: [raw/*]` would read x.zarr.lock).
    Each glob is tested against the names a build writes, not merely its depth: `raw/*/*.nc` reaches no file
    of `raw/x.zarr`, `raw/*/*` reaches its zarr.json."""
    out = Path(os.path.realpath(out))
    for entry, pattern in source_patterns(recipe):
        pattern = _real_prefix(pattern)
        names = _own_names_reached(pattern.parts, out)
        names += [Path(m).name for m in glob.glob(str(pattern)) if _is_ours(Path(m), out)]  # a link to one of them
        if names:
            raise RecipeError(
                f"recipe {recipe.path}: source {entry!r} reaches the build's own files for --out {out} "
                f"({', '.join(sorted(set(names)))}): they would be read as inputs. Put the store outside "
                "the folders that 'sources' reads, or narrow the glob to the input files (e.g. *.nc)"
            )


@dataclass(frozen=True)
class _Names:
    """The names one component of a path that a build writes can take: those `regex` matches, such as `examples`
    (none: any name, as an array named after a coordinate of the sources)."""

    regex: str
    examples: tuple[str, ...] = ()

    def may_match(self, rule: str) -> bool:
        """Whether the glob component `rule` matches one of these names (as glob does: `*` skips hidden names)."""
        if not re.search(r"[*?[]", rule):
            return re.fullmatch(self.regex, rule) is not None
        return not self.examples or any(
            fnmatch.fnmatchcase(name, rule)
            for name in self.examples
            if rule.startswith(".") or not name.startswith(".")
        )


def _named(name: str) -> _Names:
    return _Names(re.escape(name), (name,))


_ANY = _Names(r"[^/]+")
_INDEX = _Names(r"\d+", tuple(str(i) for i in (*range(100), 1000, 65535)))  # a part of a chunk's key
_TMP_ZARR = _Names(r"(zarr|\d+)\.[0-9a-f]{32}\.partial", (f"zarr.{'0' * 32}.partial", f"0.{'0' * 32}.partial"))


def _tmp(regex: str, example: str) -> _Names:  # `atomic.write_file_atomic`'s temporary copy
    return _Names(regex + r"\.tmp-\d+", (f"{example}.tmp-{os.getpid()}",))


def _store_files(depth: int) -> list[tuple[_Names, ...]]:
    """The files that a build writes inside a store or its staging, `depth` names deep (a chunk's key has one
    part per dimension of its array, so the depth has no bound)."""
    if depth == 1:
        return [(_named(name),) for name in (MARKER, "zarr.json", MANIFEST, PROGRESS)] + [
            (_TMP_ZARR,),
            (_tmp(re.escape(PROGRESS), PROGRESS),),
            (_tmp(re.escape(MANIFEST), MANIFEST),),
        ]
    if depth == 2:
        return [
            (_named(MARKERS), _Names(r"shard-\d+\.json", ("shard-0.json",))),
            (_named(MARKERS), _tmp(r"shard-\d+\.json", "shard-0.json")),
            (_ANY, _named("zarr.json")),
            (_ANY, _TMP_ZARR),
        ]
    return [(_ANY, _named("c"), *[_INDEX] * (depth - 2)), (_ANY, _named("c"), *[_INDEX] * (depth - 3), _TMP_ZARR)]


def _own_names_reached(pattern: tuple[str, ...], out: Path) -> list[str]:
    """The names beside `out` (the store, its staging, lock, log, old copy) through which the glob `pattern`
    (absolute, one rule per path component) may match a path of the build's: the folder or a file inside."""
    base = out.parent.parts
    if len(pattern) <= len(base) or not _matches(pattern[: len(base)], base):
        return []
    rule, inside = pattern[len(base)], pattern[len(base) + 1 :]
    folders = [
        _named(out.name),
        _named(staging_path(out).name),
        _Names(re.escape(out.name) + r"\.old-\d+", (f"{out.name}.old-{os.getpid()}",)),
    ]
    files = [_named(f"{out.name}.{suffix}") for suffix in ("lock", "lock.excl", "log")]
    reached = [names for names in folders + files if names.may_match(rule)]
    if inside:
        within = any(_matches(inside, path) for path in _store_files(len(inside)))
        reached = [names for names in reached if names in folders and within]
    return [names.examples[0].replace(str(os.getpid()), "<pid>") for names in reached]


def _real_prefix(pattern: Path) -> Path:
    """`pattern` with the folders before its first wildcard resolved (symbolic links, `..`)."""
    parts = pattern.parts
    fixed = next((i for i, part in enumerate(parts) if re.search(r"[*?[]", part)), len(parts))
    return Path(os.path.realpath(Path(*parts[:fixed])), *parts[fixed:])


def _is_ours(path: Path, out: Path) -> bool:
    """`path`, symbolic links resolved, is in the store or its staging, or is its lock, log or old copy."""
    real = Path(os.path.realpath(path))
    return (
        real.is_relative_to(out)
        or real.is_relative_to(staging_path(out))
        or (
            real.parent == out.parent
            and re.fullmatch(re.escape(out.name) + r"\.(lock|lock\.excl|log|partial|old-\d+)", real.name) is not None
        )
    )


def _matches(pattern: tuple[str, ...], parts: tuple) -> bool:
    """Whether each glob rule of `pattern` matches its part (a name, or the `_Names` a build may write)."""
    return len(pattern) == len(parts) and all(
        part.may_match(rule) if isinstance(part, _Names) else fnmatch.fnmatchcase(part, rule)
        for part, rule in zip(parts, pattern)
    )
