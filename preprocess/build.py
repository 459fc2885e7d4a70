"""`canonstore build RECIPE`: raw sources -> one normalised, verified store, published atomically.

    canonstore build recipes/demo.yaml          # -> data/intermediate/demo.zarr

The build, one step per module: hold the output's lock (`lock`), stop if the store is up to date
(`inputs`), append the new steps when only new dates follow the store's last one (`append`), open the
sources (`shard_jobs`), pass 1 (`scan`: train statistics and NaN facts per shard, merged in shard order),
decide the channels and statistics (`plan`), write the small arrays (`metadata`), pass 2 (`write`: each
shard normalised), then seal, verify and publish the staging folder (`staging`, `publish`). Both passes
run one task per shard, here or on dask.distributed (`executor`), with the same store bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from canonstore.formats.spec import FORMAT_VERSION
from canonstore.formats.zarr_ import ShardLayout
from canonstore.preprocess.append import try_append
from canonstore.preprocess.buildlog import build_log
from canonstore.preprocess.executor import executor_for
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
from canonstore.preprocess.recipe import Recipe, load_recipe
from canonstore.preprocess.scan import scan
from canonstore.preprocess.shard_jobs import BLOCK_MB, BlockLayout, ShardJob, open_shared_sources
from canonstore.preprocess.staging import (
    check_output,
    cleanup_on_failure,
    clear_leftovers,
    load_progress,
    new_staging,
    save_progress,
    staging_path,
    written_shards,
)
from canonstore.preprocess.upload import publish_build
from canonstore.preprocess.write import write_pass
from canonstore.provenance import package_version
from canonstore.remote import is_url
from canonstore.splits import SPLIT_CODES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """How to build: see `build`'s arguments of the same names."""

    force: bool = False
    progress: bool = True
    resume: bool = False
    block_mb: float = BLOCK_MB
    append: bool = True
    scheduler: str | None = None
    scheduler_file: str | None = None
    workers: int | None = None

    @property
    def executor(self) -> dict:
        """The arguments of `executor_for`."""
        return {"scheduler": self.scheduler, "scheduler_file": self.scheduler_file, "workers": self.workers}


def build(
    recipe_path: str | Path,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    resume: bool = False,
    block_mb: float = BLOCK_MB,
    append: bool = True,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    workers: int | None = None,
    force_unlock: bool = False,
) -> BuildResult:
    """Build the store described by the recipe at `recipe_path` (default out: data/intermediate/<name>.zarr).

    `resume=True` goes on from the shards an interrupted build of the same recipe and inputs
    completed (its `<out>.partial`); otherwise any partial is discarded. With `append` (the
    default), a store that the recipe only extends in time gets the new steps appended instead of a
    rebuild (`preprocess.append`). `scheduler` (address), `scheduler_file` or `workers` (a local
    cluster of that many processes) run the shard tasks on dask.distributed (`preprocess.executor`);
    the store is the same, bit for bit. An `s3://` `out` is built in a temporary folder and published there
    (`preprocess.upload`; `resume` does not apply; `force_unlock` removes the lock object a killed publish on
    another machine left beside it, `preprocess.remote_lock`).
    """
    options = BuildOptions(force, progress, resume, block_mb, append, scheduler, scheduler_file, workers)
    recipe = load_recipe(recipe_path)
    if is_url(out):  # built here, in a temporary folder, then published (FORMAT.md, "On object storage")
        local = dict(force=True, progress=progress, block_mb=block_mb, append=False, **options.executor)
        return publish_build(recipe, out, force, lambda path: build(recipe_path, path, **local), force_unlock)
    out = Path(out) if out else Path("data", "intermediate", f"{recipe.name}.zarr")
    refuse_output_among_sources(recipe, out)
    with build_lock(out), build_log(out), ThreadPoolExecutor(1, thread_name_prefix="canonstore-inputs") as pool:
        check_output(out)
        clear_leftovers(out)
        state = load_progress(staging_path(out)) if resume else None
        previous = recorded_attrs(out)
        # Only files whose size, mtime or inode changed since the store (or the partial build) are hashed; while
        # the sources are opened, unless the store's inputs must be compared first.
        known = (previous or {}).get("inputs", []) + (state or {}).get("inputs", [])
        stop_hashing = threading.Event()  # set on any error or Ctrl-C: the pool's exit then waits for one block only
        hashing = pool.submit(input_records, recipe.sources, known, stop=stop_hashing)
        try:
            return _check_and_build(recipe, out, force, append, progress, block_mb, previous, hashing, state, options)
        except BaseException:
            stop_hashing.set()
            raise


def _check_and_build(recipe, out, force, append, progress, block_mb, previous, hashing, state, options) -> BuildResult:
    """The rest of `build`, inside its lock: an up-to-date store or an append, else a new build."""
    if not force and previous is not None:
        inputs = hashing.result()
        if up_to_date(previous, recipe, inputs):
            logger.info(f"{out} is up to date (same recipe and inputs); nothing to do")
            return BuildResult(out, built=False)
        if append:
            result = try_append(out, recipe, inputs, previous, progress=progress, block_mb=block_mb)
            if isinstance(result, BuildResult):
                return result
            logger.info(f"rebuilding {out} (not an append: {result})")
    return _build_new(recipe, out, hashing, state, options)


@contextlib.contextmanager
def _sources_and_inputs(recipe: Recipe, hashing: Future):
    """The open sources and the input records being hashed beside them; an error hashing the inputs is raised
    first, as when they were hashed before the sources were opened."""
    try:
        with open_shared_sources(recipe) as sources:
            inputs = hashing.result()
            logger.debug(f"{recipe.path}: {len(inputs)} input files, {sum(r['size'] for r in inputs) / 1e6:.1f} MB")
            yield sources, inputs
    except Exception:
        hashing.result()
        raise


def _build_new(recipe: Recipe, out: Path, hashing: Future, state: dict | None, options: BuildOptions) -> BuildResult:
    """Sources -> scan -> plan -> write -> verify -> publish; going on from the staging's `state` (its
    progress.json) when that was built from the same recipe and inputs (`hashing`: their records, soon)."""
    began = time.perf_counter()
    with _sources_and_inputs(recipe, hashing) as (sources, inputs):
        report_sources(sources)
        labels = store_labels(recipe, sources)
        blocks = BlockLayout.for_store(
            sources.time.size, sources.sample_shape, recipe.dtype, recipe.shard_mb, options.block_mb
        )
        fingerprint = _fingerprint(recipe, inputs, blocks)
        logger.debug(
            f"{sources.time.size} steps x {sources.sample_shape} a step: shards of {blocks.shard_steps} steps, "
            f"read and written in blocks of {blocks.block_steps} steps"
        )
        staging = staging_path(out)
        if state is not None and state.get("fingerprint") == fingerprint:
            shards = ShardLayout(sources.time.size, blocks.shard_steps).count
            logger.info(f"resuming {staging}: {len(written_shards(staging))} of {shards} shards already written")
        else:
            _say_discarded(staging, state, options.resume)
            staging = new_staging(out)
            state = {"fingerprint": fingerprint, "inputs": inputs}
            save_progress(staging, state)
        job = ShardJob.for_build(recipe, sources, staging, blocks, train=labels == SPLIT_CODES["train"])
        with cleanup_on_failure(staging), executor_for(**options.executor) as executor:
            executor.check_shared([recipe.path, *recipe.sources[:1], staging])
            if "plan" in state:
                plan = Plan.from_json(state["plan"])
            else:
                plan = Plan.decide(recipe, sources, scan(executor, job, options.progress), labels)
                write_metadata(staging, store_metadata(recipe, sources, labels, plan))
                save_progress(staging, {**state, "plan": plan.to_json()})
            job = job.for_write(len(plan.channels), recipe.dtype)
            create_data(staging, job, sources.space_dims)
            files = write_pass(executor, job, plan, options.progress)
            publish(staging, out, provenance(recipe, sources, inputs, job, None), files)
    seconds = time.perf_counter() - began
    result = BuildResult(out, True, sources.time.size, len(plan.channels), job.nbytes, seconds)
    logger.info(
        f"wrote {out}: {result.steps} steps x {result.channels} channels, {job.nbytes / 1e6:.1f} MB "
        f"in {seconds:.1f} s ({job.nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)"
    )
    return result


def _say_discarded(staging: Path, state: dict | None, resume: bool) -> None:
    """Say why an interrupted build's `staging` (its progress: `state`) is not resumed, if there is one."""
    if staging.exists() and not resume:
        logger.info(f"discarding {staging}, an interrupted build (--resume would go on from it)")
    elif staging.exists():
        why = "it was built from other inputs" if state else "nothing to resume in it"
        logger.info(f"discarding {staging}: {why}")


def _fingerprint(recipe: Recipe, inputs: list[dict], blocks: BlockLayout) -> str:
    """What a partial build must share with this one to be resumed: recipe, input contents, format, blocks."""
    key = {
        "format_version": FORMAT_VERSION,
        "canonstore": package_version("canonstore"),
        "recipe": recipe.sha256,
        "inputs": content(inputs),
        "layout": blocks.as_json(),
        "progress": "per shard",
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
