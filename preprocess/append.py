"""`canonstore append STORE`: add the steps that follow a store's last one, without a rebuild.

An append is a build with the store's own plan (channels, train statistics, masks). The small
arrays (time, split, coordinates, statistics) are written anew; the full shards before the last
one are hard links to the old store's files, never opened for writing; the partial last shard is
rewritten and new shards are added from the raw files; then the staging store is verified and
published by one exchange, as a build is. The old store is never modified, so a kill at any
moment leaves it intact. Anything that would change train statistics is refused: rebuild instead.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from canonstore.errors import SourceError, StoreError
from canonstore.formats.manifest import read_manifest
from canonstore.formats.spec import FORMAT_VERSION
from canonstore.formats.store import open_store
from canonstore.formats.zarr_ import ShardLayout, shard_file
from canonstore.preprocess.buildlog import build_log
from canonstore.preprocess.executor import InProcessExecutor
from canonstore.preprocess.inputs import content, input_records, recorded_attrs, up_to_date
from canonstore.preprocess.lock import build_lock
from canonstore.preprocess.metadata import (
    create_data,
    provenance,
    report_sources,
    store_labels,
    store_metadata,
    write_metadata,
)
from canonstore.preprocess.own_files import refuse_output_among_sources
from canonstore.preprocess.plan import Plan
from canonstore.preprocess.publish import BuildResult, publish
from canonstore.preprocess.recipe import Recipe, load_recipe, read_yaml
from canonstore.preprocess.scan import NanFacts, scan
from canonstore.preprocess.shard_jobs import BLOCK_MB, BlockLayout, ShardJob, open_shared_sources
from canonstore.preprocess.sources import Sources
from canonstore.preprocess.staging import (
    check_output,
    cleanup_on_failure,
    clear_leftovers,
    new_staging,
    save_progress,
    staging_path,
)
from canonstore.preprocess.write import write_pass
from canonstore.remote import is_url
from canonstore.splits import SPLIT_CODES, find_gaps

logger = logging.getLogger(__name__)

MAY_CHANGE = ("sources", "time")  # recipe keys an append may differ in (time: only `end`, only later)


def append(
    store_path: str | Path,
    recipe_path: str | Path | None = None,
    progress: bool = True,
    block_mb: float = BLOCK_MB,
) -> BuildResult:
    """Append the new steps of the store's recipe (or `recipe_path`) to the store at `store_path`.

    Raises StoreError saying to rebuild when the change is not an append.
    """
    if is_url(store_path):
        raise StoreError(
            f"{store_path}: append works on a local store only; a store on object storage is rebuilt and "
            f"published again: canonstore build RECIPE --out {store_path}"
        )
    out = Path(store_path)
    previous = recorded_attrs(out)
    if previous is None:
        raise StoreError(f"{out}: no complete canonstore store there to append to")
    recipe = load_recipe(recipe_path or previous["recipe_path"])
    refuse_output_among_sources(recipe, out)
    with build_lock(out), build_log(out, "append"):
        check_output(out)
        clear_leftovers(out)
        previous = recorded_attrs(out)  # as it is now that no other build runs
        inputs = input_records(recipe.sources, previous.get("inputs", []))
        if up_to_date(previous, recipe, inputs):
            logger.info(f"{out} is up to date (same recipe and inputs); nothing to append")
            return BuildResult(out, built=False)
        result = try_append(out, recipe, inputs, previous, progress, block_mb)
    if isinstance(result, str):
        raise StoreError(
            f"cannot append to {out}: {result}; rebuild it: canonstore build {recipe.path} --out {out} --force"
        )
    return result


def try_append(
    out: Path,
    recipe: Recipe,
    inputs: list[dict],
    previous: dict,
    progress: bool = True,
    block_mb: float = BLOCK_MB,
) -> BuildResult | str:
    """Append if the recipe and inputs only extend the store in time; else say why not (a reason string)."""
    reason = _recipe_change(previous, recipe) or _input_change(previous, inputs)
    if reason:
        return reason
    began = time.perf_counter()
    store = open_store(out)
    old_steps = store.shape[0]
    # New steps keep the store's regular step (a longer append of finer data must not redefine it)
    step_days = None if store.session is not None else find_gaps(store.time)[1]
    with open_shared_sources(recipe, step_days=step_days) as sources:
        reason = _extends(store, sources)
        if reason:
            return reason
        labels = store_labels(recipe, sources)
        blocks = BlockLayout.for_store(sources.time.size, sources.sample_shape, recipe.dtype, recipe.shard_mb, block_mb)
        reason = _split_change(store, sources, labels) or _layout_change(previous, blocks, old_steps)
        if reason:
            return reason
        plan = Plan.of_store(store, sources)
        job = ShardJob.of(
            recipe,
            sources,
            staging_path(out),
            blocks,
            dtype=recipe.dtype,
            compression="none",
            train=np.zeros(sources.time.size, bool),  # the train statistics stay the store's
            first=old_steps,
        )
        executor = InProcessExecutor()
        reason = _nan_change(recipe, sources, plan, scan(executor, job, progress, resumable=False).nans, old_steps)
        if reason:
            return reason
        logger.info(
            f"appending {sources.time.size - old_steps} steps to {out} ({sources.time_label(old_steps)} .. "
            f"{sources.time_label(sources.time.size - 1)})"
        )
        report_sources(sources)
        # The partial last shard is rewritten; so is a one-shard store's shard, which was cut to its steps.
        same_shards = previous["layout"]["shard_steps"] == blocks.shard_steps
        first_shard = ShardLayout(sources.time.size, blocks.shard_steps).shard_of(old_steps) if same_shards else 0
        linked = _unchanged_shards(out, first_shard, len(store.shape))
        staging = new_staging(out)
        save_progress(staging, {"fingerprint": "append", "inputs": inputs})  # never resumed as a build
        with cleanup_on_failure(staging):
            write_metadata(staging, store_metadata(recipe, sources, labels, plan))
            job = job.for_write(len(plan.channels), recipe.dtype, first_shard)
            create_data(staging, job, sources.space_dims)
            for rel, (path, _) in linked.items():
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(path, staging / rel)
            files = {rel: entry for rel, (_, entry) in linked.items()} | write_pass(executor, job, plan, progress)
            publish(staging, out, provenance(recipe, sources, inputs, job, _history(previous, old_steps)), files)
    seconds = time.perf_counter() - began
    result = BuildResult(out, True, sources.time.size, len(plan.channels), job.nbytes, seconds)
    logger.info(f"appended to {out}: now {result.steps} steps, {result.steps - old_steps} new, in {seconds:.1f} s")
    return result


def _unchanged_shards(out: Path, first_shard: int, ndim: int) -> dict[str, tuple[Path, dict]]:
    """The old store's shards before `first_shard`, linked into the new one: relative path -> (path, manifest
    entry)."""
    files = read_manifest(out)["files"]
    rels = [shard_file(Path(), ndim, k).as_posix() for k in range(first_shard)]
    return {rel: (out / rel, files[rel]) for rel in rels}


def _history(previous: dict, old_steps: int) -> list[dict]:
    """The builds and appends that made the store so far (a store from before `history` was kept: its build)."""
    return previous.get("history") or [
        {
            "kind": "build",
            "created": previous["created"],
            "steps": [0, old_steps],
            "inputs": [i["path"] for i in previous["inputs"]],
        }
    ]


def _recipe_change(previous: dict, recipe: Recipe) -> str | None:
    if previous.get("format_version") != FORMAT_VERSION:
        return f"the store has format version {previous.get('format_version')}, appends need {FORMAT_VERSION}"
    if previous["layout"]["compression"] != "none":
        return "the store is compressed (appends write uncompressed shards only)"
    old, new = read_yaml(previous["recipe"]), read_yaml(recipe.text)
    changed = sorted(k for k in set(old) | set(new) if k not in MAY_CHANGE and old.get(k) != new.get(k))
    if changed:
        return f"the recipe changed in {', '.join(changed)}"
    old_time, new_time = old.get("time") or {}, new.get("time") or {}
    if old_time.get("start") != new_time.get("start"):
        return "the recipe's time.start changed"
    old_end, new_end = old_time.get("end"), new_time.get("end")
    if old_end is not None and new_end is not None and str(new_end) < str(old_end):
        return f"the recipe's time.end moved earlier ({old_end} -> {new_end})"
    return None


def _input_change(previous: dict, inputs: list[dict]) -> str | None:
    now = {r[0]: r for r in content(inputs)}
    for old in content(previous["inputs"]):
        if old[0] not in now:
            return f"input {old[0]} is no longer among the sources"
        if now[old[0]] != old:
            return f"input {old[0]} changed since the store was built"
    return None


def _extends(store, sources: Sources) -> str | None:
    old = store.shape[0]
    if sources.time.size <= old:
        return f"the sources give {sources.time.size} steps, no more than the store's {old}"
    if not np.array_equal(np.asarray(sources.time[:old]), np.asarray(store.time)):
        return "the sources' first steps are not the store's time axis"
    names = [c.name for c in sources.channels]
    if store.channels[: len(names)] != names:
        return f"the sources give channels {names}, the store has {store.channels}"
    ds = store._ds
    for name, coord in sources.coords.items():
        if name not in ds or not np.array_equal(ds[name].values, coord.values):
            return f"coordinate '{name}' differs from the store's"
    if sorted(sources.static) != sorted(store.static):
        return f"static fields {sorted(sources.static)} now, {sorted(store.static)} in the store"
    return None


def _split_change(store, sources: Sources, labels: np.ndarray) -> str | None:
    old_steps = store.shape[0]
    if not np.array_equal(labels[:old_steps], store.splits):
        return "the split rule labels the stored steps differently now"
    if (labels[old_steps:] == SPLIT_CODES["train"]).any():
        first = old_steps + int(np.argmax(labels[old_steps:] == SPLIT_CODES["train"]))
        return f"new step {sources.time_label(first)} falls in the train split, which would change the train statistics"
    return None


def _layout_change(previous: dict, blocks: BlockLayout, old_steps: int) -> str | None:
    old_shard = previous["layout"]["shard_steps"]
    if blocks.shard_steps != old_shard and old_shard < old_steps:
        return f"shards of {blocks.shard_steps} steps now, {old_shard} in the store"
    return None


def _nan_change(recipe: Recipe, sources: Sources, plan: Plan, nans: NanFacts, first: int) -> str | None:
    """Refuse NaNs the store's layout cannot hold; an error when the recipe refuses NaNs at all."""
    has_nan = nans.count > 0
    if has_nan.any() and recipe.nan_policy == "error":
        i = int(np.flatnonzero(has_nan)[0])
        ch = sources.channels[i]
        raise SourceError(
            f"{sources.file_of(ch.variable, nans.first_step[i])}: variable '{ch.variable}' (channel "
            f"{ch.name}) has {nans.count[i]} NaN or fill values, first at "
            f"{sources.time_label(nans.first_step[i])} (recipe nan_policy: error)"
        )
    for i, ch in enumerate(sources.channels):
        if i in plan.mask_channels:
            continue  # its `_valid` channel records any pattern
        expected = np.zeros(nans.pattern[i].shape, bool) if plan.static_mask is None else ~plan.static_mask[i]
        if nans.varies[i] or not np.array_equal(nans.pattern[i], expected):
            return (
                f"channel {ch.name} has missing values where the store has none (or the other way round) from "
                f"{sources.time_label(first)} on: its mask layout would change"
            )
    return None
