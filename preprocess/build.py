"""`canonstore build RECIPE`: raw sources -> one normalised, verified store, published atomically.

    canonstore build recipes/demo.yaml          # -> data/intermediate/demo.zarr

Two streaming passes over blocks of at most `BLOCK_MB` (a block never crosses a shard, and a
time step larger than a block is split across channels): the first gathers train-split
statistics (float64) and NaN facts over all steps, the second normalises and writes shard by
shard. Memory is bounded by a few blocks whatever the input size. When only new dates follow
the store's last one, the build appends them instead (see `preprocess.append`).
"""

from __future__ import annotations

import dataclasses
import os
import datetime as dt
import functools
import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from canonstore.errors import RecipeError, SourceError, StoreError
from canonstore.formats.manifest import MANIFEST, write_manifest
from canonstore.formats.store import FORMAT_VERSION, normalise
from canonstore.formats.verify import verify_store
from canonstore.formats.zarr_ import shard_count, shard_steps_for
from canonstore.preprocess import writer
from canonstore.preprocess.inputs import content, input_records
from canonstore.preprocess.netcdf_ import Channel, Sources, open_sources
from canonstore.preprocess.recipe import Recipe, load_recipe
from canonstore.preprocess.stats import FIELDS, RunningStats
from canonstore.provenance import git_commit
from canonstore.splits import SPLIT_CODES, SPLIT_NAMES, split_labels

BLOCK_MB = 32  # float32 MiB of one read/write block; its float64 copy while normalising is twice that
TOOLS = ("numpy", "xarray", "zarr", "numcodecs", "dask", "netCDF4", "cftime")


@dataclass
class BuildResult:
    path: Path
    built: bool           # False when the store was already up to date
    steps: int = 0
    channels: int = 0
    bytes: int = 0
    seconds: float = 0.0


def build(recipe_path: str | Path, out: str | Path | None = None, force: bool = False,
          progress: bool = True, log=print, resume: bool = False, block_mb: float = BLOCK_MB,
          append: bool = True) -> BuildResult:
    """Build the store described by the recipe at `recipe_path` (default out: data/intermediate/<name>.zarr).

    `resume=True` goes on from the last block an interrupted build of the same recipe and inputs
    completed (its `<out>.partial`), skipping the statistics pass; otherwise any partial is discarded.
    With `append` (the default), a store that the recipe only extends in time gets the new steps
    appended instead of a rebuild (`preprocess.append`).
    """
    recipe = load_recipe(recipe_path)
    out = Path(out) if out else Path("data", "intermediate", f"{recipe.name}.zarr")
    with writer.build_lock(out, log):
        return _build_locked(recipe, out, force, progress, log, resume, block_mb, append)


def recorded_attrs(out: Path) -> dict | None:
    """The root attrs of a complete store at `out` (None when there is none), read as plain JSON."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        return json.loads((out / "zarr.json").read_text())["attributes"]["canonstore"]
    except (OSError, ValueError, KeyError):
        return None


def _build_locked(recipe: Recipe, out: Path, force: bool, progress: bool, log, resume: bool, block_mb: float,
                  append: bool) -> BuildResult:
    writer.check_output(out)
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
    try:
        labels = store_labels(recipe, sources)
        layout = data_layout(recipe, sources, block_mb)
        fingerprint = _fingerprint(recipe, inputs, layout)
        if state is not None and state.get("fingerprint") == fingerprint:
            plan, done = _plan_from_json(state["plan"]), state["steps_done"]
            log(f"resuming {staging}: {done} of {sources.time.size} steps already written")
        else:
            if staging.exists() and not resume:
                log(f"discarding {staging}, an interrupted build (--resume would go on from it)")
            elif staging.exists():
                log(f"discarding {staging}: " + ("it was built from other inputs" if state else "nothing to resume in it"))
            stats, nans = scan(sources, labels, layout, progress)
            plan, done = _plan(recipe, sources, stats, nans, labels), None
            staging = writer.start(out)
        nbytes = publish_new(recipe, sources, labels, plan, inputs, staging, out, layout, progress, log, done,
                             {"fingerprint": fingerprint, "plan": _plan_to_json(plan), "inputs": inputs})
    finally:
        sources.close()
    seconds = time.perf_counter() - began
    result = BuildResult(out, True, sources.time.size, len(plan["channels"]), nbytes, seconds)
    log(f"wrote {out}: {result.steps} steps x {result.channels} channels, {nbytes / 1e6:.1f} MB "
        f"in {seconds:.1f} s ({nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    return result


def report_sources(sources: Sources, log) -> None:
    """Say out loud what the recipe leaves out and which gaps it allows (never dropped silently)."""
    if sources.ignored:
        log(f"not stored (not in 'variables' or 'static' of the recipe): {', '.join(sources.ignored)}")
    for unused in sources.unused_files:
        log(f"not used: {unused['path']} (matched by 'sources', but holds none of the recipe's variables; "
            f"it has {', '.join(unused['variables']) or 'no data variables'})")
    if sources.gaps:  # allowed by the recipe, still said out loud and kept in the provenance
        log(f"time axis has {len(sources.gaps)} gap(s) (recipe time_gaps: allow), first after "
            f"{sources.time_label(sources.gaps[0])}")


def store_labels(recipe: Recipe, sources: Sources) -> np.ndarray:
    """Split code per step from the recipe's rule (outside every range: excluded)."""
    keys = sources.years() if recipe.splits["by"] == "year" else np.arange(sources.time.size)
    try:
        return split_labels(keys, recipe.splits)
    except RecipeError as exc:  # e.g. an empty split: say where the data's time range comes from
        raise RecipeError(f"{exc}; {sources.coverage()}") from None


def publish_new(recipe, sources, labels, plan, inputs, staging: Path, out: Path, layout: dict, progress: bool, log,
                done: int | None, state: dict, first_shard: int = 0, linked: dict | None = None,
                history: list | None = None) -> int:
    """Write, verify and publish the staging store; on any failure no store at `out` changes.

    An append passes `first_shard` (shards before it are already in the staging, `linked` from the
    old store: relative path -> (path, manifest entry)) and the store's `history`.
    """
    try:
        nbytes = _write(recipe, sources, labels, plan, inputs, staging, layout, progress, done, state,
                        first_shard, linked, history)
        problems = verify_store(staging, checksums=False)
        if problems:
            raise StoreError(f"{staging}: the new store failed verification: {'; '.join(problems[:5])}")
        writer.publish(staging, out)
        return nbytes
    except KeyboardInterrupt:
        log(f"interrupted: {staging} kept; `canonstore build --resume` goes on from its last block")
        raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(f"cannot write the store at {exc.filename or staging}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fingerprint(recipe: Recipe, inputs: list[dict], layout: dict) -> str:
    """What a partial build must share with this one to be resumed: recipe, input contents, format, blocks."""
    key = {"format_version": FORMAT_VERSION, "canonstore": _version("canonstore"), "recipe": recipe.sha256,
           "inputs": content(inputs), "layout": layout}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _plan_to_json(plan: dict) -> dict:
    # Python's float repr round-trips float64 exactly, so a resumed build normalises identically.
    return {"channels": [dataclasses.asdict(c) for c in plan["channels"]],
            "stats": {k: np.asarray(v).tolist() for k, v in plan["stats"].items()},
            "mask_channels": [int(i) for i in plan["mask_channels"]]}


def _plan_from_json(state: dict) -> dict:
    return {"channels": [Channel(**c) for c in state["channels"]],
            "stats": {k: np.asarray(v, dtype=np.float64) for k, v in state["stats"].items()},
            "mask_channels": state["mask_channels"], "static_mask": None}


def up_to_date(attrs: dict | None, recipe: Recipe, inputs: list[dict]) -> bool:
    return (attrs is not None and attrs.get("format_version") == FORMAT_VERSION
            and attrs.get("recipe_sha256") == recipe.sha256 and content(attrs.get("inputs", [])) == content(inputs))


def data_layout(recipe: Recipe, sources: Sources, block_mb: float = BLOCK_MB) -> dict:
    """Steps per shard file, steps per block, and channels per block (all of them unless one step
    is larger than a block: then each block is one step's `block_channels` channels)."""
    nchan = sources.sample_shape[0]
    sample_bytes = int(np.prod(sources.sample_shape)) * np.dtype(recipe.dtype).itemsize
    # A store smaller than one shard is one shard of exactly its steps (no index of absent chunks).
    shard_steps = min(shard_steps_for(sample_bytes, recipe.shard_mb), sources.time.size)
    budget = int(block_mb * 2**20)
    return {"shard_steps": shard_steps, "block_steps": max(1, min(shard_steps, budget // sample_bytes)),
            "block_channels": max(1, budget // (sample_bytes // nchan)) if sample_bytes > budget else None}


def pieces(first: int, stop: int, layout: dict, nchan: int):
    """(start, stop, c0, c1) blocks covering steps [first, stop) x channels [0, nchan), in file order.

    Blocks never cross a shard; a step larger than a block comes in channel ranges.
    """
    for shard_start in range(first - first % layout["shard_steps"], stop, layout["shard_steps"]):
        shard_stop = min(stop, shard_start + layout["shard_steps"])
        for start in range(max(first, shard_start), shard_stop, layout["block_steps"]):
            end = min(shard_stop, start + layout["block_steps"])
            group = layout["block_channels"] or nchan
            for c0 in range(0, nchan, group):
                yield start, end, c0, min(nchan, c0 + group)


def _where(sources: Sources, channels: list[Channel], step: int, c: int) -> str:
    """`<file>: variable 'z' (channel z500) at time 2000-01-01T00:00`, for errors about one value."""
    ch = channels[c]
    return (f"{sources.file_of(ch.variable, step)}: variable '{ch.variable}' (channel {ch.name}) "
            f"at time {sources.time_label(step)}")


def _refuse_infinite(values: np.ndarray, start: int, sources: Sources, channels: np.ndarray) -> None:
    """±inf is never a value nor a fill: one would make a channel's mean inf and its data all inf/NaN."""
    infinite = np.isinf(values)
    if infinite.any():
        step, i = (int(i) for i in np.argwhere(infinite)[0][:2])
        count = int(infinite[:, i].sum())
        raise SourceError(f"{_where(sources, sources.channels, start + step, int(channels[i]))}: holds "
                          f"{values[step, i][infinite[step, i]][0]} ({count} infinite value(s) in steps {start}.."
                          f"{start + len(values) - 1}); infinite values are neither data nor fill values: fix or mask "
                          "them in the source")


def scan(sources: Sources, labels: np.ndarray, layout: dict, progress: bool, first: int = 0):
    """Pass 1 over steps [first, end): train statistics, plus where NaNs are (policy and mask layout)."""
    nchan = len(sources.channels)
    stats = RunningStats(nchan)
    nans = {"count": np.zeros(nchan, np.int64), "first_step": np.full(nchan, -1),
            "pattern": np.zeros(sources.sample_shape, bool), "varies": np.zeros(nchan, bool)}
    train = labels == SPLIT_CODES["train"]
    with tqdm(total=sources.time.size - first, unit="step", desc="statistics", disable=not progress) as bar:
        for start, stop, c0, c1 in pieces(first, sources.time.size, layout, nchan):
            channels = np.arange(c0, c1)
            values = sources.read(start, stop, channels)
            _refuse_infinite(values, start, sources, channels)
            if train[start:stop].any():
                stats.update(values[train[start:stop]], channels)
            isnan = np.isnan(values)
            per_step = isnan.reshape(stop - start, c1 - c0, -1).sum(axis=2)
            nans["count"][c0:c1] += per_step.sum(axis=0)
            for i in np.flatnonzero((nans["first_step"][c0:c1] < 0) & per_step.any(axis=0)):
                nans["first_step"][c0 + i] = start + int(np.argmax(per_step[:, i] > 0))
            if start == first:
                nans["pattern"][c0:c1] = isnan[0]
            changed = isnan != nans["pattern"][None, c0:c1]
            nans["varies"][c0:c1] |= changed.reshape(stop - start, c1 - c0, -1).any(axis=(0, 2))
            if c1 == nchan:
                bar.update(stop - start)
    return stats, nans


def _plan(recipe: Recipe, sources: Sources, stats: RunningStats, nans: dict, labels: np.ndarray) -> dict:
    """Apply the NaN policy and decide the channel list (with mask channels) and its statistics."""
    channels = list(sources.channels)
    has_nan = nans["count"] > 0
    if has_nan.any() and recipe.nan_policy == "error":
        listing = "; ".join(
            f"{sources.file_of(ch.variable, nans['first_step'][i])}: variable '{ch.variable}' (channel {ch.name}) "
            f"has {nans['count'][i]} NaN or fill values, first at {sources.time_label(nans['first_step'][i])}"
            for i, ch in enumerate(channels) if has_nan[i])
        raise SourceError(f"missing values found (recipe nan_policy: error): {listing}. Set `nan_policy: fill` "
                          "to fill them with the train mean and keep a validity mask")
    values = stats.as_dict()
    first_train = int(np.argmax(labels == SPLIT_CODES["train"]))
    for i, ch in enumerate(channels):
        where = f"{sources.file_of(ch.variable, first_train)}: variable '{ch.variable}' (channel {ch.name})"
        if values["count"][i] == 0:
            raise SourceError(f"{where} has no valid value in the {int((labels == SPLIT_CODES['train']).sum())} train steps; "
                              "it cannot be normalised")
        bad = [k for k in ("mean", "std", "min", "max", "sum", "sum_sq") if not np.isfinite(values[k][i])]
        if bad:  # e.g. values so large that their squares overflow float64
            raise SourceError(f"{where}: train statistics {', '.join(f'{k}={values[k][i]}' for k in bad)} are not "
                              "finite; no store is published with a non-finite statistic")
        if values["std"][i] == 0:
            raise SourceError(f"{where} is constant "
                              f"({values['mean'][i]:g}) over the train split; std 0 cannot be normalised. "
                              "Drop it from 'variables' or store it as 'static'")
    mask_channels = [i for i in np.flatnonzero(has_nan) if nans["varies"][i]]
    for i in mask_channels:
        ch = channels[i]
        channels.append(Channel(f"{ch.name}_valid", ch.variable, ch.level, "1"))
        n_valid, n_nan = stats.count[i], stats.nan_count[i]
        p = n_valid / (n_valid + n_nan)
        mask_stats = {"mean": p, "std": np.sqrt(p * (1 - p)), "min": 0.0 if n_nan else 1.0,
                      "max": 1.0 if n_valid else 0.0, "count": n_valid + n_nan, "nan_count": 0,
                      "sum": float(n_valid), "sum_sq": float(n_valid)}
        for k in FIELDS:
            values[k] = np.append(values[k], mask_stats[k])
    static_mask = None
    if has_nan.any() and len(mask_channels) < has_nan.sum():
        static_mask = ~nans["pattern"]
        static_mask[mask_channels] = True  # those channels carry their mask as a data channel
    return {"channels": channels, "stats": values, "mask_channels": mask_channels, "static_mask": static_mask}


def store_values(sources: Sources, plan: dict, start: int, stop: int, c0: int, c1: int) -> np.ndarray:
    """Physical values of store channels [c0, c1) for steps [start, stop): source channels, then the
    `<channel>_valid` channels (1 observed, 0 NaN) that the plan added for time-varying NaN patterns."""
    nsrc, masked = len(sources.channels), plan["mask_channels"]
    wanted = np.arange(c0, c1)
    source_of = np.where(wanted < nsrc, wanted, np.asarray(masked + [0], dtype=np.int64)[np.maximum(wanted - nsrc, 0)])
    needed = np.unique(source_of)
    raw = sources.read(start, stop, needed)
    if not np.array_equal(needed, source_of):  # a `_valid` channel repeats its source channel
        raw = raw[:, np.searchsorted(needed, source_of)]
    valid = wanted >= nsrc
    if valid.any():
        raw[:, valid] = ~np.isnan(raw[:, valid])
    return raw


def _write(recipe, sources, labels, plan, inputs, staging: Path, layout: dict, progress: bool,
           done: int | None, state: dict, first_shard: int = 0, linked: dict | None = None,
           history: list | None = None) -> int:
    """Pass 2: metadata through xarray, then normalised data shard by shard, attrs, manifest.

    `done` steps were written by an interrupted build (None: a fresh start). After each block is
    on disk, `progress.json` records the steps written, so a kill or power loss loses at most one block.
    """
    channels = plan["channels"]
    shape = (sources.time.size, len(channels)) + sources.sample_shape[1:]
    dims = ("time", "channel") + sources.space_dims
    if done is None:
        writer.write_metadata(staging, _metadata(recipe, sources, labels, plan))
    stats, shard_steps = plan["stats"], layout["shard_steps"]
    data = writer.DataWriter(staging, shape, dims, recipe.dtype, recipe.compression, shard_steps,
                             stats["mean"], stats["std"], resume=done is not None)
    for rel, (path, _) in (linked or {}).items():  # an append's unchanged shards: the old store's files
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, staging / rel)
    first = first_shard * shard_steps
    done = max(done or 0, first)
    writer.save_progress(staging, {**state, "steps_done": done})

    where = functools.partial(_where, sources, channels)
    try:
        with tqdm(total=shape[0] - first, initial=done - first, unit="step", desc="write", disable=not progress) as bar:
            for start, stop, c0, c1 in pieces(done, shape[0], layout, len(channels)):
                values = store_values(sources, plan, start, stop, c0, c1)
                try:
                    data.write(start, values, where, c0)
                    if c1 < len(channels):
                        continue
                    if stop % shard_steps == 0 or stop == shape[0]:
                        data.finish_shard((stop - 1) // shard_steps)  # index written, file synced
                    else:
                        data.sync()
                    writer.save_progress(staging, {**state, "steps_done": stop})
                except OSError as exc:  # disk full, read-only, quota: say where, keep nothing
                    raise StoreError(f"cannot write steps {start}..{stop - 1} (from {sources.time_label(start)}) "
                                     f"into {exc.filename or staging}: {exc.strerror or exc}") from exc
                bar.update(stop - start)
        (staging / writer.PROGRESS).unlink()  # the store's own files only, from here on
    finally:
        data.abort()
    layout = {**layout, "shards": shard_count(shape[0], shard_steps)}
    writer.set_root_attrs(staging, _provenance(recipe, sources, inputs, layout, shape, history))
    writer.set_data_labels(staging)
    writer.consolidate(staging)
    write_manifest(staging, {rel: entry for rel, (_, entry) in (linked or {}).items()})
    return int(np.prod(shape)) * np.dtype(recipe.dtype).itemsize


def _metadata(recipe: Recipe, sources: Sources, labels: np.ndarray, plan: dict) -> xr.Dataset:
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
    for name in FIELDS:
        ds[f"stats_{name}"] = ("channel", plan["stats"][name],
                               {"long_name": f"train-split {name} per channel, in physical units"})
    ds["split"] = ("time", labels, {
        "flag_values": list(range(len(SPLIT_NAMES))), "flag_meanings": " ".join(SPLIT_NAMES),
        "rule": json.dumps(recipe.splits)})
    if plan["static_mask"] is not None:
        ds["mask"] = (("channel",) + sources.space_dims, _pad_mask(plan, len(channels)).astype(np.uint8),
                      {"long_name": "1 where the raw value was observed, 0 where it was filled"})
    if sources.static:
        names = list(sources.static)
        raw = np.stack([sources.static[n][0] for n in names])
        if np.isinf(raw).any():
            bad = names[int(np.flatnonzero(np.isinf(raw).reshape(len(names), -1).any(axis=1))[0])]
            raise SourceError(f"{sources.static[bad][2]}: static variable '{bad}' holds infinite values")
        if np.isnan(raw).any() and recipe.nan_policy == "error":
            bad = names[int(np.flatnonzero(np.isnan(raw).reshape(len(names), -1).any(axis=1))[0])]
            raise SourceError(f"{sources.static[bad][2]}: static variable '{bad}' has NaN or fill values "
                              "(recipe nan_policy: error)")
        flat = raw.reshape(len(names), -1)
        mean, std = np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)
        normalised = normalise(raw, mean, std, channel_axis=0)
        ds = ds.assign_coords(static_channel=("static_channel", np.array(names, dtype=object)),
                              static_units=("static_channel", np.array([sources.static[n][1] for n in names], dtype=object)))
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
    this = {"kind": "append" if history else "build", "created": created, "steps": [first, shape[0]],
            "inputs": [i["path"] for i in inputs]}
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
        "source_time_dim": recipe.time_dim,
        "calendar": sources.calendar,
        "split_rule": recipe.splits,
        "nan_policy": recipe.nan_policy,
        "ignored_variables": sources.ignored,
        "unused_inputs": sources.unused_files,
        "time_gaps": [[sources.time_label(i), sources.time_label(i + 1)] for i in sources.gaps],
        "gap_after": list(sources.gaps),
        "latitude": sources.latitude,
        "longitude": sources.longitude,
        "normalisation": "data = (x - stats_mean) / (stats_std if stats_std > 0 else 1), train split only",
        "layout": {"dtype": recipe.dtype, "compression": recipe.compression, "shape": list(shape), **layout,
                   "data_files": "data/c/{k}/" + "/".join(["0"] * (len(shape) - 1))},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
