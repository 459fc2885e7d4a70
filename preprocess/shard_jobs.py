"""What every shard task of a build gets: a small picklable `ShardJob` (shape, I/O blocks, staging), and its sources.

Tasks run the same in the build's own process and on dask.distributed workers: each gets the job and a
shard number, opens the sources itself (once per process; the build's own process shares its open ones),
writes only its own shard file and returns small results. Tasks stream blocks of at most `BLOCK_MB`
(a block never crosses a shard; a step larger than a block is split across channels), so memory is
bounded by a few blocks whatever the input size.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from canonstore.errors import RecipeError, StoreError
from canonstore.formats.zarr_ import ShardLayout, shard_file
from canonstore.preprocess.recipe import Recipe, load_recipe
from canonstore.preprocess.sources import Sources, open_sources

BLOCK_MB = 32  # float32 MiB of one read/write block; its float64 copy while normalising is twice that


@dataclass(frozen=True)
class BlockLayout:
    """How a build cuts `data`: `shard_steps` per shard file, blocks of at most `block_steps` steps inside a
    shard, each of `block_channels` channels when one step is larger than a block (None: all channels).

    >>> blocks = BlockLayout(shard_steps=5, block_steps=2)
    >>> list(blocks.blocks(3, 8, channels=4))
    [(3, 5, 0, 4), (5, 7, 0, 4), (7, 8, 0, 4)]
    """

    shard_steps: int
    block_steps: int
    block_channels: int | None = None

    @classmethod
    def for_store(
        cls, steps: int, sample_shape: tuple, dtype: str, shard_mb: float, block_mb: float = BLOCK_MB
    ) -> BlockLayout:
        """Shards of `shard_mb` MiB and blocks of `block_mb` MiB of `steps` samples of `sample_shape` in `dtype`."""
        nchan = sample_shape[0]
        sample_bytes = int(np.prod(sample_shape)) * np.dtype(dtype).itemsize
        shard_steps = ShardLayout.of_size(steps, sample_bytes, shard_mb).shard_steps
        budget = int(block_mb * 2**20)
        return cls(
            shard_steps=shard_steps,
            block_steps=max(1, min(shard_steps, budget // sample_bytes)),
            block_channels=max(1, budget // (sample_bytes // nchan)) if sample_bytes > budget else None,
        )

    def as_json(self) -> dict:
        return dataclasses.asdict(self)

    def blocks(self, first: int, stop: int, channels: int):
        """(start, stop, c0, c1) blocks covering steps [first, stop) x channels [0, channels), in file order."""
        shards = ShardLayout(stop, self.shard_steps)  # the shards' steps, cut at `stop`
        for shard_start, shard_stop in map(shards.range, shards.shards_from(first)):
            for start in range(max(first, shard_start), shard_stop, self.block_steps):
                end = min(shard_stop, start + self.block_steps)
                group = self.block_channels or channels
                for c0 in range(0, channels, group):
                    yield start, end, c0, min(channels, c0 + group)


@dataclass(frozen=True, eq=False)
class ShardJob:
    """What every shard task of one pass needs; plain values only, so it travels to any worker."""

    recipe: str  # absolute path: workers open the sources from it
    recipe_sha256: str  # a worker refuses a recipe that changed since the build started
    staging: str
    shape: tuple  # the store's (time, channel, *space)
    dtype: str
    compression: str
    blocks: BlockLayout
    train: np.ndarray = field(repr=False)  # bool per step: which steps the statistics use
    in_place: bool = False  # the scan writes raw float32 values that the write task normalises in place
    reread: tuple = ()  # in place: channels float32 cannot hold exactly, read again from the sources
    first: int = 0  # first step to scan (an append scans only its new steps)

    @classmethod
    def of(cls, recipe: Recipe, sources: Sources, staging: Path, blocks: BlockLayout, **fields) -> ShardJob:
        """The job over `sources`' steps and channels staged at `staging`; `fields`: the others."""
        return cls(
            recipe=str(recipe.path.resolve()),
            recipe_sha256=recipe.sha256,
            staging=str(staging.resolve()),
            shape=(sources.time.size,) + sources.sample_shape,
            blocks=blocks,
            **fields,
        )

    @classmethod
    def for_build(cls, recipe: Recipe, sources: Sources, staging: Path, blocks: BlockLayout, train) -> ShardJob:
        """A build's scan job: statistics over the `train` steps (bool per step). When the store is uncompressed
        float32, the raw files are read once: the scan writes float32 values that the write pass normalises in
        place (only the channels that float32 cannot hold exactly, `reread`, are read again)."""
        in_place = recipe.compression == "none" and recipe.dtype == "float32" and sources.float32_exact.any()
        return cls.of(
            recipe,
            sources,
            staging,
            blocks,
            dtype="float32",
            compression=recipe.compression,
            train=train,
            in_place=in_place,
            reread=tuple(int(c) for c in np.flatnonzero(~sources.float32_exact)),
        )

    def for_write(self, channels: int, dtype: str, first_shard: int = 0) -> ShardJob:
        """The write pass's job: the store's `channels` (`_valid` ones added) in `dtype`, from `first_shard` on."""
        shape = (self.shape[0], channels) + self.shape[2:]
        return dataclasses.replace(
            self,
            shape=shape,
            dtype=dtype,
            first=ShardLayout(shape[0], self.blocks.shard_steps).range(first_shard)[0],
            # in place only when the raw layout is the store's (no `_valid` channels)
            in_place=self.in_place and shape == self.shape,
        )

    @property
    def shard_layout(self) -> ShardLayout:
        return ShardLayout(self.shape[0], self.blocks.shard_steps)

    @property
    def one_block_shards(self) -> bool:
        """Whether each shard is one block, uncompressed: a task then holds one block and waits for much of its time
        (one read, one write, its fsync and markers). A shard of several blocks pipelines them itself; zarr encodes a
        compressed shard whole in memory."""
        blocks = self.blocks
        return self.compression == "none" and blocks.block_channels is None and blocks.block_steps >= blocks.shard_steps

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def steps(self, k: int) -> tuple[int, int]:
        """Steps [start, stop) of shard `k` that this job covers."""
        first, stop = self.shard_layout.range(k)
        return max(self.first, first), stop

    def shards(self) -> list[int]:
        return list(self.shard_layout.shards_from(self.first))

    def pieces(self, start: int, stop: int):
        """The (start, stop, c0, c1) blocks of steps [start, stop) and all channels, in file order."""
        return self.blocks.blocks(start, stop, self.shape[1])

    @contextlib.contextmanager
    def writing(self, sources: Sources, start: int, stop: int, k: int):
        """A failed write (disk full, read-only, quota) of steps [start, stop) names the steps and the file."""
        try:
            yield
        except OSError as exc:
            path = exc.filename or shard_file(Path(self.staging), len(self.shape), k)
            raise StoreError(
                f"cannot write steps {start}..{stop - 1} (from {sources.time_label(start)}) into {path}: "
                f"{exc.strerror or exc}"
            ) from exc


_OPEN: dict[tuple[str, str], Sources] = {}  # the sources this process has open, by (recipe, sha256)


@contextlib.contextmanager
def open_shared_sources(recipe: Recipe, **options):
    """Open the recipe's sources (`options` as `open_sources`) for the build and the tasks it runs in this
    process; closed at the end."""
    sources = open_sources(recipe, **options)
    _OPEN.clear()
    _OPEN[(str(recipe.path.resolve()), recipe.sha256)] = sources
    try:
        yield sources
    finally:
        _OPEN.clear()
        sources.close()


def job_sources(job: ShardJob) -> Sources:
    """The open sources of `job`'s recipe in this process: the build's, or opened by a worker's first task."""
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


def where(sources: Sources, channels: list, step: int, c: int) -> str:
    """`<file>: variable 'z' (channel z500) at time 2000-01-01T00:00`, for errors about one value."""
    ch = channels[c]
    return (
        f"{sources.file_of(ch.variable, step)}: variable '{ch.variable}' (channel {ch.name}) "
        f"at time {sources.time_label(step)}"
    )
