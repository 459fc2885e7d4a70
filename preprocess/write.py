"""Pass 2 of a build: each shard normalised with the plan and written (one task per shard), with its checksum.

A write task normalises the raw values the scan staged in place, or reads the sources again (a compressed
or non-float32 store, `_valid` channels, channels float32 cannot hold exactly), and returns the shard's
manifest entry. Staged raw values are checked against the scan's crc32, so raw pages lost with a crashed
node are staged again; a marker says when a shard is written (after its fsync), so a retried task or a
resumed build never normalises a shard twice.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np

from canonstore._progress import progress as progress_bar
from canonstore.atomic import fsync
from canonstore.errors import SourceError, StoreError
from canonstore.formats.manifest import file_sha256
from canonstore.formats.spec import normalise_to
from canonstore.formats.zarr_ import ShardWriter, shard_file
from canonstore.preprocess.executor import Executor
from canonstore.preprocess.pipeline import Stage
from canonstore.preprocess.plan import Plan
from canonstore.preprocess.scan import ShardScan, scan_shard
from canonstore.preprocess.shard_jobs import ShardJob, job_sources, where
from canonstore.preprocess.sources import Sources, store_values
from canonstore.preprocess.staging import mark_normalising, mark_written, normalising_began, written_entry


def write_pass(executor: Executor, job: ShardJob, plan: Plan, progress: bool) -> dict[str, dict]:
    """Pass 2, one task per shard of `job` (the write pass's: `ShardJob.for_write`); returns the manifest entries
    {size, sha256} of its shards by relative path. A shard an interrupted build wrote is not written again."""
    shards = job.shards()
    written = {k: written_entry(job.staging, k) for k in shards}
    entries = {e["rel"]: e for e in written.values() if e is not None}
    raw_crcs = {k: _raw_crc32(job, k) for k in shards} if job.in_place else {}
    todo = [(k, raw_crcs.get(k)) for k in shards if written[k] is None]
    done_steps = sum(job.shard_layout.steps_in(k) for k in shards if written[k] is not None)
    total = job.shape[0] - job.first
    with progress_bar(total, "write", enabled=progress, initial=done_steps) as bar:
        for (k, _), entry in executor.map(write_shard, job, todo, plan.for_tasks()):
            entries[entry["rel"]] = entry
            bar.update(job.shard_layout.steps_in(k))
    return {rel: {"size": e["size"], "sha256": e["sha256"]} for rel, e in entries.items()}


def _raw_crc32(job: ShardJob, k: int) -> int | None:
    scanned = ShardScan.load(job, k)
    return None if scanned is None else scanned.raw_crc32


def write_shard(job: ShardJob, item: tuple[int, int | None], plan: Plan) -> dict:
    """Write shard `k` normalised with `plan`; `item` is (k, the crc32 of its raw values from the scan, None
    when not in place). Returns its manifest entry {rel, size, sha256}. Safe to run again after a kill at any
    point: a shard whose in-place normalisation may have begun, or whose raw values do not match the scan's
    crc32 (pages lost with a crashed node), is staged again from the sources first."""
    k, raw_crc = item
    entry = written_entry(job.staging, k)
    if entry is not None:
        return entry
    sources = job_sources(job)
    if job.compression != "none":
        entry = _write_compressed(job, k, plan, sources)
    elif not job.in_place:
        entry = _write_uncompressed(job, k, plan, sources)[0]
    else:
        if normalising_began(job.staging, k) or raw_crc is None:
            raw_crc = scan_shard(job, k, moments=False).raw_crc32
        mark_normalising(job.staging, k)
        entry, crc = _write_uncompressed(job, k, plan, sources)
        if crc != raw_crc:
            raw_crc = scan_shard(job, k, moments=False).raw_crc32
            entry, crc = _write_uncompressed(job, k, plan, sources)
            if crc != raw_crc:
                raise StoreError(
                    f"{Path(job.staging, entry['rel'])}: raw values changed between writing and "
                    "reading them back twice; is the filesystem shared coherently by all workers?"
                )
    mark_written(job.staging, k, entry)
    return entry


def _write_uncompressed(job: ShardJob, k: int, plan: Plan, sources: Sources) -> tuple[dict, int]:
    """Normalise shard `k` (in place, or from the sources) block by block, while a thread of its own writes
    the blocks normalised before and takes the file's sha256 as they go by (in file order), starting their
    writeback to the disk. Returns the entry and the crc32 of the raw values read."""
    mean, std = np.asarray(plan.stats["mean"]), np.asarray(plan.stats["std"])
    start, stop = job.shard_layout.range(k)
    layout = (Path(job.staging), job.shape, job.dtype, job.blocks.shard_steps)
    shards = ShardWriter(*layout, resume=job.in_place)
    staged = ShardWriter(*layout, resume=True) if job.in_place else None  # reads the raw values back
    digest, size, crc = hashlib.sha256(), 0, 0

    def write(piece: tuple) -> None:
        nonlocal size
        a, b, c0, out = piece
        with job.writing(sources, a, b, k):
            shards.write(a, out, c0, writeback=True)
        digest.update(out.data)
        size += out.nbytes

    try:
        with Stage(write, name=f"canonstore-write-{k}") as writer:
            for a, b, c0, c1 in job.pieces(start, stop):
                if staged is not None:
                    values = staged.read(a, b - a, c0, c1 - c0)
                    crc = zlib.crc32(values.data, crc)
                    out = normalise_to(values, mean[c0:c1], std[c0:c1], job.dtype, out=values)
                    again = [c for c in job.reread if c0 <= c < c1]
                    if again:  # e.g. packed int16 with a float64 scale_factor: normalised from float64
                        exact = sources.read(a, b, np.array(again))
                        out[:, np.array(again) - c0] = normalise_to(exact, mean[again], std[again], job.dtype)
                else:
                    values = store_values(sources, plan.mask_channels, a, b, c0, c1)
                    out = _normalised(values, job, plan, sources, a, c0)
                writer.put((a, b, c0, out))
        with job.writing(sources, start, stop, k):
            index = shards.finish_shard(k)
    finally:
        shards.close()
        if staged is not None:
            staged.close()
    digest.update(index)
    rel = shard_file(Path(), len(job.shape), k).as_posix()
    return {"rel": rel, "size": size + len(index), "sha256": digest.hexdigest()}, crc


def _write_compressed(job: ShardJob, k: int, plan: Plan, sources: Sources) -> dict:
    import zarr

    start, stop = job.shard_layout.range(k)
    array = zarr.open_array(Path(job.staging, "data"), mode="r+")
    for a, b, c0, c1 in job.pieces(start, stop):
        values = store_values(sources, plan.mask_channels, a, b, c0, c1)
        array[a:b, c0:c1] = _normalised(values, job, plan, sources, a, c0)
    rel = shard_file(Path(), len(job.shape), k).as_posix()
    path = Path(job.staging, rel)
    fsync(path)
    return {"rel": rel, "size": path.stat().st_size, "sha256": file_sha256(path)}


def _normalised(values: np.ndarray, job: ShardJob, plan: Plan, sources: Sources, start: int, c0: int) -> np.ndarray:
    """`values` of the steps from `start` and channels from `c0` normalised into the job's dtype; a value that
    overflows float16 is refused by name."""
    channels = slice(c0, c0 + values.shape[1])
    mean, std = np.asarray(plan.stats["mean"])[channels], np.asarray(plan.stats["std"])[channels]
    out = normalise_to(values, mean, std, job.dtype)
    if np.dtype(job.dtype) == np.float16 and np.isinf(out).any():
        step, chan = (int(i) for i in np.argwhere(np.isinf(out))[0][:2])
        raise SourceError(
            f"{where(sources, plan.channels, start + step, c0 + chan)}: a normalised value overflows "
            f"float16 (max {float(np.finfo(np.float16).max):g}); use storage.dtype float32"
        )
    return out
