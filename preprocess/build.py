"""`canonstore build RECIPE`: raw sources -> one normalised, verified store, published atomically.

    canonstore build recipes/demo.yaml          # -> data/intermediate/demo.zarr

Two passes of one task per shard (`preprocess.tasks`), run here or on dask.distributed
(`preprocess.executor`): the first gathers train-split statistics (float64 per-step moments,
merged in time order) and NaN facts, and stages raw float32 values where it can; the second
normalises and writes each shard and returns its checksum. Tasks stream blocks of at most
`BLOCK_MB` (a block never crosses a shard; a step larger than a block is split across channels),
so memory is bounded by a few blocks whatever the input size. When only new dates follow the
store's last one, the build appends them instead (see `preprocess.append`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import glob
import hashlib
import itertools
import json
import os
import platform
import re
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from canonstore.atomic import MARKER
from canonstore.errors import RecipeError, SourceError, StoreError
from canonstore.formats.coords import longitude_is_periodic
from canonstore.formats.manifest import MANIFEST, write_manifest
from canonstore.formats.spec import FORMAT_VERSION, STAT_NAMES, normalise, valid_name
from canonstore.formats.verify import verify_store
from canonstore.formats.zarr_ import ShardLayout
from canonstore.preprocess import buildlog, tasks, writer
from canonstore.preprocess.executor import executor_for
from canonstore.preprocess.inputs import content, input_records
from canonstore.preprocess.recipe import Recipe, load_recipe, source_patterns
from canonstore.preprocess.sources import Channel, Sources, open_sources
from canonstore.preprocess.stats import RunningStats
from canonstore.provenance import git_commit
from canonstore.splits import SPLIT_CODES, SPLIT_NAMES, split_keys, split_labels

BLOCK_MB = 32  # float32 MiB of one read/write block; its float64 copy while normalising is twice that
TOOLS = ("numpy", "xarray", "zarr", "numcodecs", "dask", "netCDF4", "cftime")


@dataclass
class BuildResult:
    path: Path
    built: bool  # False when the store was already up to date
    steps: int = 0
    channels: int = 0
    bytes: int = 0
    seconds: float = 0.0


def build(
    recipe_path: str | Path,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    log=print,
    resume: bool = False,
    block_mb: float = BLOCK_MB,
    append: bool = True,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    workers: int | None = None,
) -> BuildResult:
    """Build the store described by the recipe at `recipe_path` (default out: data/intermediate/<name>.zarr).

    `resume=True` goes on from the shards an interrupted build of the same recipe and inputs
    completed (its `<out>.partial`); otherwise any partial is discarded. With `append` (the
    default), a store that the recipe only extends in time gets the new steps appended instead of a
    rebuild (`preprocess.append`). `scheduler` (address), `scheduler_file` or `workers` (a local
    cluster of that many processes) run the shard tasks on dask.distributed (`preprocess.executor`);
    the store is the same, bit for bit.
    """
    recipe = load_recipe(recipe_path)
    out = Path(out) if out else Path("data", "intermediate", f"{recipe.name}.zarr")
    where_to_run = {"scheduler": scheduler, "scheduler_file": scheduler_file, "workers": workers}
    refuse_output_among_sources(recipe, out)
    with writer.build_lock(out, log), buildlog.build_log(out, log) as log:
        return _build_locked(recipe, out, force, progress, log, resume, block_mb, append, where_to_run)


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
        return [(_named(name),) for name in (MARKER, "zarr.json", MANIFEST, writer.PROGRESS)] + [
            (_TMP_ZARR,),
            (_tmp(re.escape(writer.PROGRESS), writer.PROGRESS),),
            (_tmp(re.escape(MANIFEST), MANIFEST),),
        ]
    if depth == 2:
        return [
            (_named(tasks.MARKERS), _Names(r"shard-\d+\.json", ("shard-0.json",))),
            (_named(tasks.MARKERS), _tmp(r"shard-\d+\.json", "shard-0.json")),
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
        _named(writer.staging_path(out).name),
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
        or real.is_relative_to(writer.staging_path(out))
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


def recorded_attrs(out: Path) -> dict | None:
    """The root attrs of a complete store at `out` (None when there is none), read as plain JSON."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        return json.loads((out / "zarr.json").read_text())["attributes"]["canonstore"]
    except (OSError, ValueError, KeyError):
        return None


def _build_locked(
    recipe: Recipe,
    out: Path,
    force: bool,
    progress: bool,
    log,
    resume: bool,
    block_mb: float,
    append: bool,
    where_to_run: dict,
) -> BuildResult:
    writer.check_output(out)
    writer.clear_leftovers(out, log)
    staging = writer.staging_path(out)
    state = writer.load_progress(staging) if resume else None
    previous = recorded_attrs(out)
    # Only files whose size, mtime or inode changed since the store (or the partial build) are hashed.
    inputs = input_records(recipe.sources, (previous or {}).get("inputs", []) + (state or {}).get("inputs", []))
    if not force and up_to_date(previous, recipe, inputs):
        log(f"{out} is up to date (same recipe and inputs); nothing to do")
        return BuildResult(out, built=False)
    if append and not force and previous is not None:
        from canonstore.preprocess.append import try_append

        result = try_append(out, recipe, inputs, previous, progress=progress, log=log, block_mb=block_mb)
        if isinstance(result, BuildResult):
            return result
        log(f"rebuilding {out} (not an append: {result})")

    began = time.perf_counter()
    sources = open_sources(recipe)
    report_sources(sources, log)
    tasks.share_sources(recipe.path.resolve(), recipe.sha256, sources)
    try:
        labels = store_labels(recipe, sources)
        layout = data_layout(recipe, sources, block_mb)
        fingerprint = _fingerprint(recipe, inputs, layout)
        resuming = state is not None and state.get("fingerprint") == fingerprint
        if resuming:
            log(
                f"resuming {staging}: {len(tasks.written_shards(staging))} of "
                f"{ShardLayout(sources.time.size, layout['shard_steps']).count} shards already written"
            )
        else:
            if staging.exists() and not resume:
                log(f"discarding {staging}, an interrupted build (--resume would go on from it)")
            elif staging.exists():
                log(
                    f"discarding {staging}: "
                    + ("it was built from other inputs" if state else "nothing to resume in it")
                )
            staging = writer.start(out)
            state = {"fingerprint": fingerprint, "inputs": inputs}
            writer.save_progress(staging, state)
        job = tasks.ShardJob(
            recipe=str(recipe.path.resolve()),
            recipe_sha256=recipe.sha256,
            staging=str(staging.resolve()),
            shape=(sources.time.size,) + sources.sample_shape,
            dtype="float32",
            compression=recipe.compression,
            layout=layout,
            train=labels == SPLIT_CODES["train"],
            # One raw read: the scan writes float32 values that the write pass normalises in place
            # (only channels that float32 cannot hold exactly are read again).
            in_place=recipe.compression == "none" and recipe.dtype == "float32" and sources.float32_exact.any(),
            reread=tuple(int(c) for c in np.flatnonzero(~sources.float32_exact)),
        )
        with writer.cleanup_on_failure(staging, log), executor_for(**where_to_run, log=log) as executor:
            executor.check_shared([recipe.path, *recipe.sources[:1], staging])
            if "plan" in state:
                plan = _plan_from_json(state["plan"])
            else:
                stats, nans = scan(executor, job, progress)
                plan = _plan(recipe, sources, stats, nans, labels)
                writer.write_metadata(staging, store_metadata(recipe, sources, labels, plan))
                state = {**state, "plan": _plan_to_json(plan)}
                writer.save_progress(staging, state)
            nbytes = publish_new(
                recipe, sources, labels, plan, inputs, staging, out, layout, progress, log, executor, job
            )
    finally:
        tasks.share_sources(recipe.path.resolve(), recipe.sha256, None)
        sources.close()
    seconds = time.perf_counter() - began
    result = BuildResult(out, True, sources.time.size, len(plan["channels"]), nbytes, seconds)
    log(
        f"wrote {out}: {result.steps} steps x {result.channels} channels, {nbytes / 1e6:.1f} MB "
        f"in {seconds:.1f} s ({nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)"
    )
    return result


def report_sources(sources: Sources, log) -> None:
    """Say out loud what the recipe leaves out and which gaps it allows (never dropped silently)."""
    if sources.ignored:
        log(f"not stored (not in 'variables' or 'static' of the recipe): {', '.join(sources.ignored)}")
    for unused in sources.unused_files:
        log(
            f"not used: {unused['path']} (matched by 'sources', but holds none of the recipe's variables; "
            f"it has {', '.join(unused['variables']) or 'no data variables'})"
        )
    ends = set() if sources.session is None else set(np.flatnonzero(np.diff(sources.session)).tolist())
    gaps = [g for g in sources.gaps if g not in ends]
    if ends:
        log(
            f"{len(sources.sessions)} sessions ({', '.join(sources.sessions[:4])}"
            f"{' ...' if len(sources.sessions) > 4 else ''}): windows end at each session's last step"
        )
    if gaps:  # allowed by the recipe, still said out loud and kept in the provenance
        log(f"time axis has {len(gaps)} gap(s) (recipe time_gaps: allow), first after {sources.time_label(gaps[0])}")


def store_labels(recipe: Recipe, sources: Sources) -> np.ndarray:
    """Split code per step from the recipe's rule (outside every range: excluded)."""
    sessions = None if sources.session is None else np.array(sources.sessions, dtype=object)[sources.session]
    try:
        return split_labels(split_keys(recipe.splits, sources.time, sessions), recipe.splits)
    except RecipeError as exc:  # e.g. an empty split: say where the data's time range comes from
        raise RecipeError(f"{exc}; {sources.coverage()}") from None


def publish_new(
    recipe,
    sources,
    labels,
    plan,
    inputs,
    staging: Path,
    out: Path,
    layout: dict,
    progress: bool,
    log,
    executor,
    job: tasks.ShardJob,
    first_shard: int = 0,
    linked: dict | None = None,
    history: list | None = None,
) -> int:
    """Write the shards, verify the staging store and publish it (inside `writer.cleanup_on_failure`).

    An append passes `first_shard` (shards before it are already in the staging, `linked` from the
    old store: relative path -> (path, manifest entry)) and the store's `history`.
    """
    nbytes = _write(
        recipe, sources, labels, plan, inputs, staging, layout, progress, executor, job, first_shard, linked, history
    )
    problems = verify_store(staging, checksums=False)
    if problems:
        raise StoreError(f"{staging}: the new store failed verification: {'; '.join(problems[:5])}")
    writer.publish(staging, out)
    return nbytes


def _fingerprint(recipe: Recipe, inputs: list[dict], layout: dict) -> str:
    """What a partial build must share with this one to be resumed: recipe, input contents, format, blocks."""
    key = {
        "format_version": FORMAT_VERSION,
        "canonstore": _version("canonstore"),
        "recipe": recipe.sha256,
        "inputs": content(inputs),
        "layout": layout,
        "progress": "per shard",
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _plan_to_json(plan: dict) -> dict:
    # Python's float repr round-trips float64 exactly, so a resumed build normalises identically.
    return {
        "channels": [dataclasses.asdict(c) for c in plan["channels"]],
        "stats": {k: np.asarray(v).tolist() for k, v in plan["stats"].items()},
        "mask_channels": [int(i) for i in plan["mask_channels"]],
    }


def _plan_from_json(state: dict) -> dict:
    return {
        "channels": [Channel(**c) for c in state["channels"]],
        "stats": {k: np.asarray(v, dtype=np.float64) for k, v in state["stats"].items()},
        "mask_channels": state["mask_channels"],
        "static_mask": None,
    }


def up_to_date(attrs: dict | None, recipe: Recipe, inputs: list[dict]) -> bool:
    return (
        attrs is not None
        and attrs.get("format_version") == FORMAT_VERSION
        and attrs.get("recipe_sha256") == recipe.sha256
        and content(attrs.get("inputs", [])) == content(inputs)
    )


def data_layout(recipe: Recipe, sources: Sources, block_mb: float = BLOCK_MB) -> dict:
    """Steps per shard file, steps per block, and channels per block (all of them unless one step
    is larger than a block: then each block is one step's `block_channels` channels)."""
    nchan = sources.sample_shape[0]
    sample_bytes = int(np.prod(sources.sample_shape)) * np.dtype(recipe.dtype).itemsize
    shard_steps = ShardLayout.of_size(sources.time.size, sample_bytes, recipe.shard_mb).shard_steps
    budget = int(block_mb * 2**20)
    return {
        "shard_steps": shard_steps,
        "block_steps": max(1, min(shard_steps, budget // sample_bytes)),
        "block_channels": max(1, budget // (sample_bytes // nchan)) if sample_bytes > budget else None,
    }


def scan(executor, job: tasks.ShardJob, progress: bool, resumable: bool = True):
    """Pass 1, one task per shard: train statistics and NaN facts, merged in time order.

    Shards finish in any order on a cluster; their per-step moments are merged strictly by shard, so
    the statistics are the same bits whatever ran them. With `resumable`, each shard's result is kept
    in the staging, and a shard that an interrupted build scanned is not scanned again.
    """
    nchan = job.shape[1]
    stats = RunningStats(nchan)
    nans = {
        "count": np.zeros(nchan, np.int64),
        "first_step": np.full(nchan, -1),
        "pattern": np.zeros(job.shape[1:], bool),
        "varies": np.zeros(nchan, bool),
    }
    shards = job.shards()
    known = {k: tasks.load_scan(job, k) for k in shards} if resumable else {}
    known = {k: r for k, r in known.items() if r is not None}
    order, pending, size = list(shards), {}, int(np.prod(job.shape[2:]))
    with tqdm(total=job.shape[0] - job.first, unit="step", desc="statistics", disable=not progress) as bar:
        fresh = executor.map(tasks.scan_shard, job, [k for k in shards if k not in known])
        for k, result in itertools.chain(known.items(), fresh):
            if resumable and k not in known:
                tasks.save_scan(job, result)
            pending[k] = result
            bar.update(len(range(*job.steps(k))))
            while order and order[0] in pending:  # merged in shard order, whatever order they finished in
                first = order[0] == shards[0]
                _merge_scan(stats, nans, pending.pop(order.pop(0)), size, first)
    return stats, nans


def _merge_scan(stats: RunningStats, nans: dict, result: dict, size: int, first: bool) -> None:
    """Add one shard's scan; NaN layouts are compared with the first scanned step's."""
    stats.merge(result["moments"], size)
    shape = nans["pattern"].shape
    pattern = (
        np.zeros(shape, bool)
        if result["pattern"] is None
        else np.unpackbits(result["pattern"], count=int(np.prod(shape))).astype(bool).reshape(shape)
    )
    if first:
        nans["pattern"] = pattern
    nans["count"] += result["nan_count"]
    new = (nans["first_step"] < 0) & (result["first_nan"] >= 0)
    nans["first_step"][new] = result["first_nan"][new]
    nans["varies"] |= result["varies"] | (pattern != nans["pattern"]).reshape(shape[0], -1).any(axis=1)


def _plan(recipe: Recipe, sources: Sources, stats: RunningStats, nans: dict, labels: np.ndarray) -> dict:
    """Apply the NaN policy and decide the channel list (with mask channels) and its statistics."""
    channels = list(sources.channels)
    has_nan = nans["count"] > 0
    if has_nan.any() and recipe.nan_policy == "error":
        listing = "; ".join(
            f"{sources.file_of(ch.variable, nans['first_step'][i])}: variable '{ch.variable}' (channel {ch.name}) "
            f"has {nans['count'][i]} NaN or fill values, first at {sources.time_label(nans['first_step'][i])}"
            for i, ch in enumerate(channels)
            if has_nan[i]
        )
        raise SourceError(
            f"missing values found (recipe nan_policy: error): {listing}. Set `nan_policy: fill` "
            "to fill them with the train mean and keep a validity mask"
        )
    values = stats.as_dict()
    first_train = int(np.argmax(labels == SPLIT_CODES["train"]))
    for i, ch in enumerate(channels):
        where = f"{sources.file_of(ch.variable, first_train)}: variable '{ch.variable}' (channel {ch.name})"
        if values["count"][i] == 0:
            raise SourceError(
                f"{where} has no valid value in the {int((labels == SPLIT_CODES['train']).sum())} train steps; "
                "it cannot be normalised"
            )
        bad = [k for k in ("mean", "std", "min", "max", "sum", "sum_sq") if not np.isfinite(values[k][i])]
        if bad:  # e.g. values so large that their squares overflow float64
            raise SourceError(
                f"{where}: train statistics {', '.join(f'{k}={values[k][i]}' for k in bad)} are not "
                "finite; no store is published with a non-finite statistic"
            )
        if values["std"][i] == 0:
            raise SourceError(
                f"{where} is constant "
                f"({values['mean'][i]:g}) over the train split; std 0 cannot be normalised. "
                "Drop it from 'variables' or store it as 'static'"
            )
    mask_channels = [i for i in np.flatnonzero(has_nan) if nans["varies"][i]]
    for i in mask_channels:
        ch = channels[i]
        channels.append(Channel(valid_name(ch.name), ch.variable, ch.level, "1"))
        n_valid, n_nan = stats.count[i], stats.nan_count[i]
        p = n_valid / (n_valid + n_nan)
        mask_stats = {
            "mean": p,
            "std": np.sqrt(p * (1 - p)),
            "min": 0.0 if n_nan else 1.0,
            "max": 1.0 if n_valid else 0.0,
            "count": n_valid + n_nan,
            "nan_count": 0,
            "sum": float(n_valid),
            "sum_sq": float(n_valid),
        }
        for k in STAT_NAMES:
            values[k] = np.append(values[k], mask_stats[k])
    static_mask = None
    if has_nan.any() and len(mask_channels) < has_nan.sum():
        static_mask = ~nans["pattern"]
        static_mask[mask_channels] = True  # those channels carry their mask as a data channel
    return {"channels": channels, "stats": values, "mask_channels": mask_channels, "static_mask": static_mask}


def _write(
    recipe,
    sources,
    labels,
    plan,
    inputs,
    staging: Path,
    layout: dict,
    progress: bool,
    executor,
    job: tasks.ShardJob,
    first_shard: int = 0,
    linked: dict | None = None,
    history: list | None = None,
) -> int:
    """Pass 2, one task per shard: normalised data; then attrs and the manifest, with the tasks' checksums.

    A shard written by an interrupted build (its marker in the staging) is not written again.
    """
    channels = plan["channels"]
    shape = (sources.time.size, len(channels)) + sources.sample_shape[1:]
    if not (staging / "data" / "zarr.json").is_file():
        writer.create_data(
            staging,
            shape,
            ("time", "channel") + sources.space_dims,
            recipe.dtype,
            recipe.compression,
            layout["shard_steps"],
        )
    for rel, (path, _) in (linked or {}).items():  # an append's unchanged shards: the old store's files
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, staging / rel)
    job = dataclasses.replace(
        job,
        shape=shape,
        dtype=recipe.dtype,
        first=ShardLayout(shape[0], layout["shard_steps"]).range(first_shard)[0],
        # in place only when the raw layout is the store's (no `_valid` channels)
        in_place=job.in_place and shape == job.shape,
    )
    norm = {
        "mean": plan["stats"]["mean"],
        "std": plan["stats"]["std"],
        "mask_channels": list(plan["mask_channels"]),
        "channels": channels,
    }
    shards = job.shards()
    written = {k: tasks.written_entry(job, k) for k in shards}
    entries = {e["rel"]: e for e in written.values() if e is not None}
    raw_crcs = {k: (tasks.load_scan(job, k) or {}).get("raw_crc32") for k in shards} if job.in_place else {}
    todo = [(k, raw_crcs.get(k)) for k in shards if written[k] is None]
    done_steps = sum(job.shard_layout.steps_in(k) for k in shards if written[k] is not None)
    with tqdm(total=shape[0] - job.first, initial=done_steps, unit="step", desc="write", disable=not progress) as bar:
        for (k, _), entry in executor.map(tasks.write_shard, job, todo, norm):
            entries[entry["rel"]] = entry
            bar.update(job.shard_layout.steps_in(k))
    tasks.clear_markers(staging)
    (staging / writer.PROGRESS).unlink()  # the store's own files only, from here on
    layout = {**layout, "shards": job.shard_layout.count}
    writer.set_root_attrs(staging, _provenance(recipe, sources, inputs, layout, shape, history))
    writer.set_data_labels(staging)
    writer.consolidate(staging)
    known = {rel: entry for rel, (_, entry) in (linked or {}).items()}
    known.update({rel: {"size": e["size"], "sha256": e["sha256"]} for rel, e in entries.items()})
    write_manifest(staging, known)
    return int(np.prod(shape)) * np.dtype(recipe.dtype).itemsize


def store_metadata(recipe: Recipe, sources: Sources, labels: np.ndarray, plan: dict) -> xr.Dataset:
    channels = plan["channels"]
    coords = {
        "time": ("time", sources.time),
        "channel": ("channel", np.array([c.name for c in channels], dtype=object)),
        "channel_variable": ("channel", np.array([c.variable for c in channels], dtype=object)),
        "channel_level": ("channel", np.array([np.nan if c.level is None else c.level for c in channels])),
        "channel_units": ("channel", np.array([c.units for c in channels], dtype=object)),
    }
    for name, coord in sources.coords.items():
        # Variable-length strings: zarr v3 has no stable spec for numpy's fixed-width '<U'.
        coords[name] = coord.variable.astype(object) if coord.dtype.kind == "U" else coord.variable
    ds = xr.Dataset(coords=coords)
    for name in STAT_NAMES:
        ds[f"stats_{name}"] = (
            "channel",
            plan["stats"][name],
            {"long_name": f"train-split {name} per channel, in physical units"},
        )
    ds["split"] = (
        "time",
        labels,
        {
            "flag_values": list(range(len(SPLIT_NAMES))),
            "flag_meanings": " ".join(SPLIT_NAMES),
            "rule": json.dumps(recipe.splits),
        },
    )
    if sources.session is not None:
        ds["session"] = ("time", sources.session.astype(np.int32), {"session_ids": list(sources.sessions)})
    if plan["static_mask"] is not None:
        ds["mask"] = (
            ("channel",) + sources.space_dims,
            _pad_mask(plan, len(channels)).astype(np.uint8),
            {"long_name": "1 where the raw value was observed, 0 where it was filled"},
        )
    if sources.static:
        names = list(sources.static)
        raw = np.stack([sources.static[n][0] for n in names])
        if np.isinf(raw).any():
            bad = names[int(np.flatnonzero(np.isinf(raw).reshape(len(names), -1).any(axis=1))[0])]
            raise SourceError(f"{sources.static[bad][2]}: static variable '{bad}' holds infinite values")
        if np.isnan(raw).any() and recipe.nan_policy == "error":
            bad = names[int(np.flatnonzero(np.isnan(raw).reshape(len(names), -1).any(axis=1))[0])]
            raise SourceError(
                f"{sources.static[bad][2]}: static variable '{bad}' has NaN or fill values (recipe nan_policy: error)"
            )
        flat = raw.reshape(len(names), -1)
        mean, std = np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)
        normalised = normalise(raw, mean, std, channel_axis=0)
        ds = ds.assign_coords(
            static_channel=("static_channel", np.array(names, dtype=object)),
            static_units=("static_channel", np.array([sources.static[n][1] for n in names], dtype=object)),
        )
        ds["static"] = (("static_channel",) + sources.space_dims, normalised.astype(np.float32))
        ds["static_mean"] = ("static_channel", mean)
        ds["static_std"] = ("static_channel", std)
    return ds


def _pad_mask(plan: dict, nchan: int) -> np.ndarray:
    mask = plan["static_mask"]
    extra = nchan - mask.shape[0]
    return np.concatenate([mask, np.ones((extra,) + mask.shape[1:], bool)]) if extra else mask


def _provenance(recipe, sources, inputs, layout, shape, history) -> dict:
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    first = history[-1]["steps"][1] if history else 0
    this = {
        "kind": "append" if history else "build",
        "created": created,
        "steps": [first, shape[0]],
        "inputs": [i["path"] for i in inputs],
    }
    return {
        "format_version": FORMAT_VERSION,
        "name": recipe.name,
        "created": created,
        "canonstore_version": _version("canonstore"),
        "git_commit": git_commit(),
        "tools": {"python": platform.python_version(), **{t: _version(t) for t in TOOLS}},
        "recipe": recipe.text,
        "recipe_path": str(recipe.path.resolve()),
        "recipe_sha256": recipe.sha256,
        "inputs": inputs,
        "history": (history or []) + [this],
        "source_time_dim": sources.time_dim,
        "calendar": sources.calendar,
        "split_rule": recipe.splits,
        "nan_policy": recipe.nan_policy,
        "ignored_variables": sources.ignored,
        "unused_inputs": sources.unused_files,
        "time_gaps": [[sources.time_label(i), sources.time_label(i + 1)] for i in sources.gaps],
        "gap_after": list(sources.gaps),
        "latitude": sources.latitude,
        "longitude": sources.longitude,
        "longitude_periodic": longitude_is_periodic(sources.coords.get(sources.longitude), sources.space_dims),
        "normalisation": "data = (x - stats_mean) / (stats_std if stats_std > 0 else 1), train split only",
        "layout": {
            "dtype": recipe.dtype,
            "compression": recipe.compression,
            "shape": list(shape),
            **layout,
            "data_files": "data/c/{k}/" + "/".join(["0"] * (len(shape) - 1)),
        },
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
