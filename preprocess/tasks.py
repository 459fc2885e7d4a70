"""The build's unit of work, one shard: scan it (statistics, NaN facts), then write it normalised.

Tasks run the same in the build's own process and on dask.distributed workers: each gets a small
picklable `ShardJob` and a shard number, opens the sources itself (once per process), writes only
its own shard file and returns small results (per-step moments, the shard's manifest entry).

When every source decodes to float32 and the store is uncompressed float32 without `_valid`
channels, the scan also writes the raw values at their final offsets and the write task
normalises them in place, so the raw files are read once; otherwise the write task reads them
again (checked against the scan's crc32, so raw pages lost with a crashed node are staged again).
Markers in `<staging>/.build/` say which shards are scanned and written; what a marker claims is on
disk first (fsync), so a retried task or a resumed build never normalises a shard twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from canonstore.atomic import fsync, write_file_atomic
from canonstore.errors import RecipeError, SourceError, StoreError
from canonstore.formats.manifest import file_sha256
from canonstore.formats.spec import normalise_to
from canonstore.formats.zarr_ import ShardLayout, ShardWriter, shard_file
from canonstore.preprocess.recipe import load_recipe
from canonstore.preprocess.sources import Sources, open_sources, store_values
from canonstore.preprocess.stats import step_moments

MARKERS = ".build"  # per-shard markers inside the staging store; removed before the manifest


@dataclass(frozen=True, eq=False)
class ShardJob:
    """What every shard task of one build needs; plain values only, so it travels to any worker."""

    recipe: str  # absolute path: workers open the sources from it
    recipe_sha256: str  # a worker refuses a recipe that changed since the build started
    staging: str
    shape: tuple  # the store's (time, channel, *space)
    dtype: str
    compression: str
    layout: dict  # shard_steps, block_steps, block_channels (see build.data_layout)
    train: np.ndarray = field(repr=False)  # bool per step: which steps the statistics use
    in_place: bool = False  # the scan writes raw float32 values that the write task normalises in place
    reread: tuple = ()  # in place: channels float32 cannot hold exactly, read again from the sources
    first: int = 0  # first step to scan (an append scans only its new steps)

    @property
    def shard_layout(self) -> ShardLayout:
        return ShardLayout(self.shape[0], self.layout["shard_steps"])

    def steps(self, k: int) -> tuple[int, int]:
        """Steps [start, stop) of shard `k` that this job scans."""
        first, stop = self.shard_layout.range(k)
        return max(self.first, first), stop

    def shards(self) -> list[int]:
        return list(self.shard_layout.shards_from(self.first))

    def marker(self, name: str) -> Path:
        return Path(self.staging, MARKERS, name)


_OPEN: dict[tuple[str, str], Sources] = {}  # the sources this process has open, by (recipe, sha256)


def share_sources(recipe_path: Path, sha256: str, sources: Sources | None) -> None:
    """Let tasks in this process use the driver's open `sources` (None: forget them)."""
    _OPEN.clear()
    if sources is not None:
        _OPEN[(str(recipe_path), sha256)] = sources


def job_sources(job: ShardJob) -> Sources:
    key = (job.recipe, job.recipe_sha256)
    if key not in _OPEN:  # a worker's first task of this build
        recipe = load_recipe(job.recipe)
        if recipe.sha256 != job.recipe_sha256:
            raise RecipeError(f"{job.recipe}: changed while the build ran; start the build again")
        for old in _OPEN.values():
            old.close()
        _OPEN.clear()
        _OPEN[key] = open_sources(recipe)
    return _OPEN[key]


def pieces(first: int, stop: int, layout: dict, nchan: int):
    """(start, stop, c0, c1) blocks covering steps [first, stop) x channels [0, nchan), in file order.

    Blocks never cross a shard; a step larger than a block comes in channel ranges.
    """
    shards = ShardLayout(stop, layout["shard_steps"])  # the shards' steps, cut at `stop`
    for shard_start, shard_stop in map(shards.range, shards.shards_from(first)):
        for start in range(max(first, shard_start), shard_stop, layout["block_steps"]):
            end = min(shard_stop, start + layout["block_steps"])
            group = layout["block_channels"] or nchan
            for c0 in range(0, nchan, group):
                yield start, end, c0, min(nchan, c0 + group)


def where(sources: Sources, channels: list, step: int, c: int) -> str:
    """`<file>: variable 'z' (channel z500) at time 2000-01-01T00:00`, for errors about one value."""
    ch = channels[c]
    return (
        f"{sources.file_of(ch.variable, step)}: variable '{ch.variable}' (channel {ch.name}) "
        f"at time {sources.time_label(step)}"
    )


def scan_shard(job: ShardJob, k: int, moments: bool = True) -> dict:
    """Statistics and NaN facts of shard `k`'s steps; in an in-place job also writes its raw values.

    Returns `moments` (6, train steps, channel) in step order, `nan_count`, `first_nan` (step or -1)
    and `varies` per channel, `pattern`: packed NaN bits of the shard's first step (None: no NaN),
    and `raw_crc32` of the raw values written (None when not in place).
    """
    sources = job_sources(job)
    nchan = len(sources.channels)
    start, stop = job.steps(k)
    train = job.train[start:stop]
    result = {
        "k": k,
        "moments": np.zeros((6, int(train.sum()) if moments else 0, nchan)),
        "nan_count": np.zeros(nchan, np.int64),
        "first_nan": np.full(nchan, -1, np.int64),
        "varies": np.zeros(nchan, bool),
        "pattern": None,
        "raw_crc32": 0 if job.in_place else None,
    }
    reference = np.zeros(sources.sample_shape, bool)  # NaNs of the shard's first step
    raw = ShardWriter(Path(job.staging), job.shape, np.float32, job.layout["shard_steps"]) if job.in_place else None
    row_of_step = np.cumsum(train) - 1  # position of a train step among the shard's train steps
    try:
        for a, b, c0, c1 in pieces(start, stop, job.layout, nchan):
            values = sources.read(a, b, np.arange(c0, c1), np.float32 if job.in_place else np.float64)
            _nan_facts(values, a, a == start, c0, reference, result, sources)
            mine = train[a - start : b - start]
            if moments and mine.any():
                rows = row_of_step[a - start : b - start][mine]
                picked = values[mine] if not mine.all() else values
                result["moments"][:, rows, c0:c1] = step_moments(picked)
                again = [c for c in job.reread if c0 <= c < c1] if job.in_place else []
                if again:  # statistics of the exact (float64) values, not of their float32 rounding
                    exact = sources.read(a, b, np.array(again))
                    result["moments"][:, rows[:, None], np.array(again)] = step_moments(exact[mine])
            if raw is not None:
                with _writing(sources, a, b, job, k):
                    raw.write(a, values, c0)
                # Not synced (that would write every byte to disk twice): the write task checks this crc32.
                result["raw_crc32"] = zlib.crc32(values.data, result["raw_crc32"])
    finally:
        if raw is not None:
            raw.close()
    if reference.any():
        result["pattern"] = np.packbits(reference)
    return result


def _nan_facts(
    values: np.ndarray, start: int, first: bool, c0: int, reference: np.ndarray, result: dict, sources: Sources
) -> None:
    """Count NaNs per channel, note where the NaN layout varies, and refuse ±inf by name."""
    n, c = values.shape[:2]
    rows = values.reshape(n, c, -1)
    lo, hi = rows.min(axis=2), rows.max(axis=2)  # NaN where a field has any NaN; ±inf where it has inf
    infinite = np.isinf(lo) | np.isinf(hi)
    for i in np.flatnonzero(np.isnan(lo).any(axis=0)):
        isnan = np.isnan(rows[:, i])
        infinite[:, i] |= np.isinf(rows[:, i]).any(axis=1)
        per_step = isnan.sum(axis=1)
        result["nan_count"][c0 + i] += int(per_step.sum())
        if result["first_nan"][c0 + i] < 0:
            result["first_nan"][c0 + i] = start + int(np.argmax(per_step > 0))
        if first:
            reference[c0 + i] = isnan[0].reshape(reference.shape[1:])
        if (isnan != reference[c0 + i].reshape(1, -1)).any():
            result["varies"][c0 + i] = True
    clean = ~np.isnan(lo).any(axis=0)  # no NaN in this block: varies if the reference step had some
    result["varies"][c0 : c0 + c] |= clean & reference[c0 : c0 + c].reshape(c, -1).any(axis=1)
    if infinite.any():
        step, i = (int(v) for v in np.argwhere(infinite)[0])
        field_values = rows[step, i]
        count = int(np.isinf(rows[:, i]).sum())
        raise SourceError(
            f"{where(sources, sources.channels, start + step, c0 + i)}: holds "
            f"{field_values[np.isinf(field_values)][0]} ({count} infinite value(s) in steps {start}.."
            f"{start + n - 1}); infinite values are neither data nor fill values: fix or mask them in "
            "the source"
        )


def write_shard(job: ShardJob, item: tuple[int, int | None], plan: dict) -> dict:
    """Write shard `k` normalised with `plan` (mean, std, mask_channels, channels); `item` is (k, the
    crc32 of its raw values from the scan, None when not in place). Returns its manifest entry
    {rel, size, sha256}. Safe to run again after a kill at any point: a shard whose in-place
    normalisation may have begun, or whose raw values do not match the scan's crc32 (pages lost
    with a crashed node), is staged again from the sources first."""
    k, raw_crc = item
    entry = written_entry(job, k)
    if entry is not None:
        return entry
    sources = job_sources(job)
    if job.compression != "none":
        entry = _write_compressed(job, k, plan, sources)
    elif not job.in_place:
        entry = _write_uncompressed(job, k, plan, sources)[0]
    else:
        started = job.marker(f"normalising-{k}")
        if started.exists() or raw_crc is None:
            raw_crc = scan_shard(job, k, moments=False)["raw_crc32"]
        write_file_atomic(started, "")
        entry, crc = _write_uncompressed(job, k, plan, sources)
        if crc != raw_crc:
            raw_crc = scan_shard(job, k, moments=False)["raw_crc32"]
            entry, crc = _write_uncompressed(job, k, plan, sources)
            if crc != raw_crc:
                raise StoreError(
                    f"{Path(job.staging, entry['rel'])}: raw values changed between writing and "
                    "reading them back twice; is the filesystem shared coherently by all workers?"
                )
    write_file_atomic(job.marker(f"shard-{k}.json"), json.dumps(entry))
    return entry


def _write_uncompressed(job: ShardJob, k: int, plan: dict, sources: Sources) -> tuple[dict, int]:
    """Normalise shard `k` (in place, or from the sources) block by block; the file's sha256 is taken
    as the blocks go by (they come in file order). Returns the entry and the crc32 of the raw values read."""
    mean, std = np.asarray(plan["mean"]), np.asarray(plan["std"])
    start, stop = job.shard_layout.range(k)
    shards = ShardWriter(Path(job.staging), job.shape, job.dtype, job.layout["shard_steps"], resume=job.in_place)
    digest, size, crc = hashlib.sha256(), 0, 0
    try:
        for a, b, c0, c1 in pieces(start, stop, job.layout, job.shape[1]):
            if job.in_place:
                values = shards.read(a, b - a, c0, c1 - c0)
                crc = zlib.crc32(values.data, crc)
                out = normalise_to(values, mean[c0:c1], std[c0:c1], job.dtype, out=values)
                again = [c for c in job.reread if c0 <= c < c1]
                if again:  # e.g. packed int16 with a float64 scale_factor: normalised from float64
                    exact = sources.read(a, b, np.array(again))
                    out[:, np.array(again) - c0] = normalise_to(exact, mean[again], std[again], job.dtype)
            else:
                values = store_values(sources, plan["mask_channels"], a, b, c0, c1)
                out = _normalised(values, mean, std, job.dtype, a, c0, sources, plan["channels"])
            with _writing(sources, a, b, job, k):
                shards.write(a, out, c0)
            digest.update(out.data)
            size += out.nbytes
        with _writing(sources, start, stop, job, k):
            index = shards.finish_shard(k)
    finally:
        shards.close()
    digest.update(index)
    rel = shard_file(Path(), len(job.shape), k).as_posix()
    return {"rel": rel, "size": size + len(index), "sha256": digest.hexdigest()}, crc


@contextlib.contextmanager
def _writing(sources: Sources, start: int, stop: int, job: ShardJob, k: int):
    """A failed write (disk full, read-only, quota) names the steps and the file."""
    try:
        yield
    except OSError as exc:
        path = exc.filename or shard_file(Path(job.staging), len(job.shape), k)
        raise StoreError(
            f"cannot write steps {start}..{stop - 1} (from {sources.time_label(start)}) into {path}: "
            f"{exc.strerror or exc}"
        ) from exc


def _write_compressed(job: ShardJob, k: int, plan: dict, sources: Sources) -> dict:
    import zarr

    mean, std = np.asarray(plan["mean"]), np.asarray(plan["std"])
    start, stop = job.shard_layout.range(k)
    array = zarr.open_array(Path(job.staging, "data"), mode="r+")
    for a, b, c0, c1 in pieces(start, stop, job.layout, job.shape[1]):
        values = store_values(sources, plan["mask_channels"], a, b, c0, c1)
        array[a:b, c0:c1] = _normalised(values, mean, std, job.dtype, a, c0, sources, plan["channels"])
    rel = shard_file(Path(), len(job.shape), k).as_posix()
    path = Path(job.staging, rel)
    fsync(path)
    return {"rel": rel, "size": path.stat().st_size, "sha256": file_sha256(path)}


def _normalised(values, mean, std, dtype, start, c0, sources, names) -> np.ndarray:
    out = normalise_to(values, mean[c0 : c0 + values.shape[1]], std[c0 : c0 + values.shape[1]], dtype)
    if np.dtype(dtype) == np.float16 and np.isinf(out).any():
        step, chan = (int(i) for i in np.argwhere(np.isinf(out))[0][:2])
        raise SourceError(
            f"{where(sources, names, start + step, c0 + chan)}: a normalised value overflows "
            f"float16 (max {float(np.finfo(np.float16).max):g}); use storage.dtype float32"
        )
    return out


def save_scan(job: ShardJob, result: dict) -> None:
    """Keep a shard's scan in the staging (plain .npz arrays, never pickles) for a resumed build."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in result.items() if v is not None})
    write_file_atomic(job.marker(f"scan-{result['k']}.npz"), buffer.getvalue())


def load_scan(job: ShardJob, k: int) -> dict | None:
    try:
        with np.load(job.marker(f"scan-{k}.npz"), allow_pickle=False) as saved:
            result = {name: saved[name] for name in saved.files}
    except (OSError, ValueError):
        return None
    result["k"] = int(result["k"])
    result["raw_crc32"] = int(result["raw_crc32"]) if "raw_crc32" in result else None
    result.setdefault("pattern", None)
    return result


def written_entry(job: ShardJob, k: int) -> dict | None:
    """Shard `k`'s manifest entry if an earlier task (or build) wrote it completely, else None."""
    try:
        return json.loads(job.marker(f"shard-{k}.json").read_text())
    except (OSError, ValueError):
        return None


def written_shards(staging: Path) -> list[int]:
    """The shards of a staging store that are completely written (for progress and tests)."""
    return sorted(int(p.stem.split("-")[1]) for p in Path(staging, MARKERS).glob("shard-*.json"))


def clear_markers(staging: Path) -> None:
    shutil.rmtree(Path(staging, MARKERS), ignore_errors=True)
