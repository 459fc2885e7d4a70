"""Pass 1 of a build: each shard's train statistics and NaN facts (one task per shard), merged in shard order.

A scan task returns per-step float64 moments, never sums over its shard: shards finish in any order on a
cluster, and their moments are merged strictly by shard, so the statistics are the same bits whatever ran
them. When the job is in place (`ShardJob.in_place`), the scan also writes the raw float32 values at their
final offsets, so that the write pass normalises them without reading the raw files again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from canonstore._progress import progress as progress_bar
from canonstore.atomic import write_file_atomic
from canonstore.errors import SourceError
from canonstore.formats.zarr_ import ShardWriter
from canonstore.preprocess.executor import Executor
from canonstore.preprocess.pipeline import Stage, prefetched
from canonstore.preprocess.shard_jobs import ShardJob, job_sources, where
from canonstore.preprocess.sources import Sources
from canonstore.preprocess.staging import marker
from canonstore.preprocess.stats import RunningStats, step_moments


@dataclass(frozen=True, eq=False)
class ShardScan:
    """One shard's scan: `moments` (6, train steps, channel) in step order; per channel `nan_count`,
    `first_nan` (step or -1) and whether the NaN layout `varies`; `pattern`, the packed NaN bits of the
    shard's first step (None: no NaN); `raw_crc32` of the raw values written in place (None: not in place)."""

    k: int
    moments: np.ndarray
    nan_count: np.ndarray
    first_nan: np.ndarray
    varies: np.ndarray
    pattern: np.ndarray | None = None
    raw_crc32: int | None = None

    def save(self, job: ShardJob) -> None:
        """Keep it in the staging (plain .npz arrays, never pickles) for a resumed build."""
        buffer = io.BytesIO()
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        np.savez(buffer, **{name: value for name, value in fields.items() if value is not None})
        write_file_atomic(marker(job.staging, f"scan-{self.k}.npz"), buffer.getvalue())

    @classmethod
    def load(cls, job: ShardJob, k: int) -> ShardScan | None:
        """Shard `k`'s scan kept by an earlier task (or build), else None."""
        try:
            with np.load(marker(job.staging, f"scan-{k}.npz"), allow_pickle=False) as saved:
                values = {name: saved[name] for name in saved.files}
        except (OSError, ValueError):
            return None
        values["k"] = int(values["k"])
        values["raw_crc32"] = int(values["raw_crc32"]) if "raw_crc32" in values else None
        return cls(**values)


@dataclass(eq=False)
class NanFacts:
    """NaN facts of the scanned steps, per channel: `count`, `first_step` (-1: none), whether the NaN layout
    `varies` over time; `pattern`: NaN or not per value of the first scanned step."""

    count: np.ndarray
    first_step: np.ndarray
    pattern: np.ndarray
    varies: np.ndarray

    @classmethod
    def none(cls, sample_shape: tuple) -> NanFacts:
        nchan = sample_shape[0]
        return cls(np.zeros(nchan, np.int64), np.full(nchan, -1), np.zeros(sample_shape, bool), np.zeros(nchan, bool))

    def add(self, scan: ShardScan, first: bool) -> None:
        """Add one shard's facts; its NaN layout is compared with the first scanned step's."""
        shape = self.pattern.shape
        pattern = (
            np.zeros(shape, bool)
            if scan.pattern is None
            else np.unpackbits(scan.pattern, count=int(np.prod(shape))).astype(bool).reshape(shape)
        )
        if first:
            self.pattern = pattern
        self.count += scan.nan_count
        new = (self.first_step < 0) & (scan.first_nan >= 0)
        self.first_step[new] = scan.first_nan[new]
        self.varies |= scan.varies | (pattern != self.pattern).reshape(shape[0], -1).any(axis=1)


@dataclass(frozen=True, eq=False)
class ScanResult:
    """Pass 1's result: the train statistics and the NaN facts of the scanned steps."""

    stats: RunningStats
    nans: NanFacts


def scan(executor: Executor, job: ShardJob, progress: bool, resumable: bool = True) -> ScanResult:
    """Pass 1, one task per shard: train statistics and NaN facts, merged in shard order.

    With `resumable`, each shard's scan is kept in the staging, and a shard that an interrupted build
    scanned is not scanned again.
    """
    result = ScanResult(RunningStats(job.shape[1]), NanFacts.none(job.shape[1:]))
    shards = job.shards()
    known = {k: ShardScan.load(job, k) for k in shards} if resumable else {}
    known = {k: r for k, r in known.items() if r is not None}
    order, pending, size = list(shards), {}, int(np.prod(job.shape[2:]))
    with progress_bar(job.shape[0] - job.first, "statistics", enabled=progress) as bar:
        tasks = executor.map(scan_and_keep if resumable else scan_shard, job, [k for k in shards if k not in known])
        # closed on any error here: its running tasks stop before the build cleans up (a traceback would keep an
        # unclosed generator, and tasks still writing into the staging the cleanup removes, alive)
        with contextlib.closing(tasks) as fresh:
            for k, shard in itertools.chain(known.items(), fresh):
                pending[k] = shard
                bar.update(len(range(*job.steps(k))))
                while order and order[0] in pending:  # merged in shard order, whatever order they finished in
                    first = order[0] == shards[0]
                    shard = pending.pop(order.pop(0))
                    result.stats.merge(shard.moments, size)
                    result.nans.add(shard, first)
    return result


def scan_and_keep(job: ShardJob, k: int) -> ShardScan:
    """`scan_shard`, its result kept in the staging by the task itself (beside the next task's work)."""
    scanned = scan_shard(job, k)
    scanned.save(job)
    return scanned


def scan_shard(job: ShardJob, k: int, moments: bool = True) -> ShardScan:
    """Statistics and NaN facts of shard `k`'s steps; in an in-place job also writes its raw values."""
    sources = job_sources(job)
    nchan = len(sources.channels)
    start, stop = job.steps(k)
    train = job.train[start:stop]
    scanned = ShardScan(
        k=k,
        moments=np.zeros((6, int(train.sum()) if moments else 0, nchan)),
        nan_count=np.zeros(nchan, np.int64),
        first_nan=np.full(nchan, -1, np.int64),
        varies=np.zeros(nchan, bool),
    )
    crc = 0 if job.in_place else None
    reference = np.zeros(sources.sample_shape, bool)  # NaNs of the shard's first step
    raw = ShardWriter(Path(job.staging), job.shape, np.float32, job.blocks.shard_steps) if job.in_place else None
    row_of_step = np.cumsum(train) - 1  # position of a train step among the shard's train steps
    dtype = np.float32 if job.in_place else np.float64

    def stage(piece: tuple) -> None:  # on a thread of its own, blocks in file order
        nonlocal crc
        a, b, c0, values = piece
        with job.writing(sources, a, b, k):
            raw.write(a, values, c0)
        # Not synced (that would write every byte to disk twice): the write task checks this crc32.
        crc = zlib.crc32(values.data, crc)

    def blocks():  # read on a thread of their own, a block ahead of the statistics
        for a, b, c0, c1 in job.pieces(start, stop):
            yield a, b, c0, sources.read(a, b, np.arange(c0, c1), dtype)

    try:
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(Stage(stage, name=f"canonstore-stage-{k}")) if raw is not None else None
            read = stack.enter_context(contextlib.closing(prefetched(blocks, name=f"canonstore-read-{k}")))
            for a, b, c0, values in read:
                c1 = c0 + values.shape[1]
                extremes = _nan_facts(values, a, a == start, c0, reference, scanned, sources)
                if writer is not None:  # after the NaN facts: a block with ±inf is refused, never staged
                    writer.put((a, b, c0, values))
                mine = train[a - start : b - start]
                if moments and mine.any():
                    rows = row_of_step[a - start : b - start][mine]
                    picked, picked_extremes = values, extremes
                    if not mine.all():  # this block's train steps, and their fields' extremes
                        picked, picked_extremes = values[mine], (extremes[0][mine], extremes[1][mine])
                    scanned.moments[:, rows, c0:c1] = step_moments(picked, picked_extremes)
                    again = [c for c in job.reread if c0 <= c < c1] if job.in_place else []
                    if again:  # statistics of the exact (float64) values, not of their float32 rounding
                        exact = sources.read(a, b, np.array(again))
                        scanned.moments[:, rows[:, None], np.array(again)] = step_moments(exact[mine])
    finally:
        if raw is not None:
            raw.close()
    return dataclasses.replace(scanned, pattern=np.packbits(reference) if reference.any() else None, raw_crc32=crc)


def _nan_facts(
    values: np.ndarray, start: int, first: bool, c0: int, reference: np.ndarray, scanned: ShardScan, sources: Sources
) -> tuple[np.ndarray, np.ndarray]:
    """Count NaNs per channel, note where the NaN layout varies, and refuse ±inf by name; returns each
    field's (steps, channel) min and max (NaN where it has a NaN), which the statistics reuse."""
    n, c = values.shape[:2]
    rows = values.reshape(n, c, -1)
    lo, hi = rows.min(axis=2), rows.max(axis=2)  # NaN where a field has any NaN; ±inf where it has inf
    infinite = np.isinf(lo) | np.isinf(hi)
    for i in np.flatnonzero(np.isnan(lo).any(axis=0)):
        isnan = np.isnan(rows[:, i])
        infinite[:, i] |= np.isinf(rows[:, i]).any(axis=1)
        per_step = isnan.sum(axis=1)
        scanned.nan_count[c0 + i] += int(per_step.sum())
        if scanned.first_nan[c0 + i] < 0:
            scanned.first_nan[c0 + i] = start + int(np.argmax(per_step > 0))
        if first:
            reference[c0 + i] = isnan[0].reshape(reference.shape[1:])
        if (isnan != reference[c0 + i].reshape(1, -1)).any():
            scanned.varies[c0 + i] = True
    clean = ~np.isnan(lo).any(axis=0)  # no NaN in this block: varies if the reference step had some
    scanned.varies[c0 : c0 + c] |= clean & reference[c0 : c0 + c].reshape(c, -1).any(axis=1)
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
    return lo, hi
