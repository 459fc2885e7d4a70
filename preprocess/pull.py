"""`canonstore pull s3://.../name.zarr DEST.zarr`: a store on object storage copied to local disk, for
memory-mapped training (FORMAT.md, "On object storage").

Each object up to `whole_mb` MiB comes in one GET. Larger ones come in ranged parts, only as many as there are
connections to use: their bytes shared among the `limit` connections, rounded up to `part_mb` MiB (`_Sizes`), so
one large shard is spread over all connections and a store of many large shards is fetched whole, one object per
connection. (S3 serves ranges natively; some servers, moto among them, read the whole object for every range,
where more parts than connections would only cost.) `limit` requests are in flight across
all objects. Each object is written into `<rel>.part` inside the staging folder `DEST.zarr.partial`
(canonstore's marker, as a build's) and hashed as its bytes arrive, in order, then renamed to `<rel>` only
when its size and sha256 are the manifest's; each piece's writeback to the disk starts as it is written
(`atomic.start_writeback`), so the final sync waits for little. A killed pull therefore goes on from every file
it completed (checked again by size and sha256: files are not synced one by one, so a file a power loss cut
short is fetched again); `.part` files and files that do not match are fetched again. Once all are there, the
manifest is written into the folder verbatim, the folder synced to disk in one step (`atomic.sync_tree`),
checked against the manifest (every file listed and no other, of its size; each sha256 was checked on arrival,
so nothing is read twice) and published by the same swap as a build (`atomic.replace_folder`): the rename comes
after the sync, so a published copy never lacks bytes. The remote root `zarr.json` is fetched and checked as
any file; a pull that fails asks `open_remote` why (a publish under way at the URL says so in one line). An
existing DEST must be a canonstore store; one of the same build is kept (unless a file is missing or of
another size: then it is pulled again).

    pull("s3://bucket/wb2/era5.zarr", "data/era5.zarr")     # -> PullResult(path, files, fetched, kept, seconds)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from canonstore._progress import progress as progress_bar
from canonstore.atomic import MARKER, has_marker, make_staging, replace_folder, start_writeback, sync_tree
from canonstore.errors import StoreError
from canonstore.formats.manifest import MANIFEST, check_manifest, file_sha256, inside
from canonstore.formats.remote_store import open_remote, remote_manifest
from canonstore.objects import LIMIT, Objects, run_async
from canonstore.preprocess.lock import build_lock
from canonstore.preprocess.staging import check_output, staging_path
from canonstore.remote import URL

logger = logging.getLogger(__name__)

# Objects up to WHOLE_MB MiB come in one request (rclone's multi-thread cutoff is the same 256 MiB). Larger ones
# come in ranges of at least PART_MB (AWS's advice for byte-range GETs: 8 or 16 MB), no more of them than there are
# connections (`_Sizes.shared`): one large shard is spread over many connections; more parts would not add one.
WHOLE_MB = 256.0
PART_MB = 8.0


@dataclass
class PullResult:
    """What `pull` put at `path`: `files` in all, `fetched` bytes downloaded now, `kept` files already complete."""

    path: Path
    files: int
    fetched: int
    kept: int
    seconds: float


def pull(
    url: str,
    dest: str | Path,
    progress: bool = True,
    limit: int = LIMIT,
    part_mb: float = PART_MB,
    whole_mb: float = WHOLE_MB,
) -> PullResult:
    """Copy the store at `url` to the local folder `dest` (see the module docstring)."""
    began = time.perf_counter()
    _check_mib(whole_mb, part_mb)  # before anything is made
    url, dest = URL(str(url).rstrip("/")), Path(dest)
    objects = Objects(url)
    files, raw = remote_manifest(objects)  # one line for a missing store, bucket or key, or an interrupted publish
    with build_lock(dest):
        check_output(dest)
        same = (dest / MANIFEST).is_file() and (dest / MANIFEST).read_bytes() == raw
        if same and not check_manifest(dest, checksums=False):  # every file there at its size, else pull again
            logger.info(f"{dest} is already {url} (the same manifest); nothing to pull")
            return PullResult(dest, len(files), 0, len(files), time.perf_counter() - began)
        staging = staging_path(dest)
        if not has_marker(staging, "store"):
            make_staging(staging, "store")  # removes an empty one; refuses one canonstore did not make
        for rel in files:
            inside(staging, rel)  # no link inside the staging folder leads a file out of it
        todo, kept = _sort_out(staging, files)
        if kept:
            logger.info(f"resuming {staging}: {len(kept)} of {len(files)} files already complete")
        total = sum(files[rel]["size"] for rel in todo)
        with progress_bar(total, "pull", "B", enabled=progress, unit_scale=True) as bar:
            sizes = _Sizes.shared([files[rel]["size"] for rel in todo], limit, whole_mb, part_mb)
            try:
                fetched = run_async(_fetch(objects, staging, {rel: files[rel] for rel in todo}, limit, sizes, bar))
            except StoreError:
                open_remote(url)  # the root zarr.json was never read apart: a publish under way says so in one line
                raise
        (staging / MANIFEST).write_bytes(raw)  # verbatim (the local store has the same build id); synced below
        sync_tree(staging)  # every file on disk before the rename publishes the copy
        problems = check_manifest(staging, checksums=False)  # every file's sha256 was checked as it arrived
        if problems:
            raise StoreError(f"{staging}: the pulled store failed verification: {'; '.join(problems[:5])}")
        replace_folder(staging, dest, "store")
    seconds = time.perf_counter() - began
    rate = fetched / 1e6 / max(seconds, 1e-9)
    logger.info(f"pulled {url} to {dest}: {fetched / 1e6:.1f} MB in {seconds:.1f} s ({rate:.1f} MB/s)")
    return PullResult(dest, len(files), fetched, len(kept), seconds)


def _sort_out(staging: Path, files: dict) -> tuple[list[str], list[str]]:
    """(to fetch, kept): a file is kept when its size and sha256 are the manifest's; anything else in the
    staging folder (a `.part`, a file the manifest does not list, a build's progress) is removed."""
    kept = []
    for folder, _, names in os.walk(staging):
        for name in names:
            path = Path(folder, name)
            rel = path.relative_to(staging).as_posix()
            if rel == MARKER:
                continue
            entry = files.get(rel)
            if entry and path.stat().st_size == entry["size"] and file_sha256(path) == entry["sha256"]:
                kept.append(rel)
            else:
                path.unlink()
    done = set(kept)
    return sorted(rel for rel in files if rel not in done), sorted(kept)


@dataclass(frozen=True)
class _Sizes:
    """How objects are requested: whole up to `whole` bytes, larger ones in ranged parts of `part` bytes.

    >>> _Sizes.shared([440_000_000, 600], limit=16).part / 2**20    # one large shard: 14 parts, not 53 of 8 MiB
    32.0
    >>> _Sizes.shared([2**30] * 20, limit=16).parts(2**30)          # more large objects than connections: whole
    [(0, 1073741824)]
    """

    whole: int
    part: int

    @classmethod
    def shared(cls, sizes, limit: int = LIMIT, whole_mb: float = WHOLE_MB, part_mb: float = PART_MB) -> _Sizes:
        """Objects above `whole_mb` MiB (of `sizes`, in bytes) split so that their bytes are shared among the
        `limit` connections: parts of their total over `limit`, rounded up to `part_mb` MiB (so at most about
        `limit` parts in all); an object no larger than one part comes whole."""
        _check_mib(whole_mb, part_mb)
        whole, unit = int(whole_mb * (1 << 20)), max(1, int(part_mb * (1 << 20)))
        large = sum(size for size in sizes if size > whole)
        share = -(-large // max(1, limit))
        return cls(whole, max(unit, -(-share // unit) * unit))

    def parts(self, size: int) -> list[tuple[int, int]]:
        """[start, stop) of each request for an object of `size` bytes; one for a small or empty object."""
        if size <= max(self.whole, self.part):
            return [(0, size)]
        return [(start, min(start + self.part, size)) for start in range(0, size, self.part)]


def _check_mib(*sizes: float) -> None:
    if not all(math.isfinite(mib) and mib >= 0 for mib in sizes):
        raise ValueError(f"pull: part sizes are finite numbers of MiB >= 0, not {', '.join(map(str, sizes))}")


def _write_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _placed(fd: int, data, offset: int) -> None:
    """Write `data` at `offset` and start its writeback (the final sync then waits for little)."""
    _write_all(fd, data, offset)
    start_writeback(fd, offset, len(data))


def _absorb(fd: int, digest, data, offset: int) -> None:
    """`_placed`, then hash `data` (hashlib releases the GIL): in a worker thread, off the event loop."""
    _placed(fd, data, offset)
    digest.update(data)


def _hash_back(fd: int, digest, start: int, stop: int) -> None:
    """Hash bytes [start, stop) written earlier (a part, once every part before it is hashed)."""
    while start < stop:
        data = os.pread(fd, min(stop - start, 8 << 20), start)
        digest.update(data)
        start += len(data)


async def _fetch(objects: Objects, staging: Path, files: dict, limit: int, sizes: _Sizes, bar) -> int:
    """Every file of `files`, whole or in ranged parts (`sizes`), `limit` requests in flight (and at most
    2 x `limit` files open), each hashed as it arrives; returns the bytes received."""
    requests, open_files, received = asyncio.Semaphore(limit), asyncio.Semaphore(2 * limit), [0]

    def count(data) -> None:
        received[0] += len(data)
        bar.update(len(data))

    async def whole(rel: str, fd: int, digest) -> None:
        async with requests:
            offset = 0
            async for data in objects.stream(rel):
                await asyncio.to_thread(_absorb, fd, digest, data, offset)
                offset += len(data)
                count(data)

    async def ranged(rel: str, fd: int, digest, parts: list[tuple[int, int]]) -> None:
        done, hashed, in_order, ends = set(), [0], asyncio.Lock(), dict(parts)

        async def piece(start: int, stop: int) -> None:
            async with requests:  # streamed: a part of any size holds one 8 MiB piece in memory, not the part
                offset = start
                async for data in objects.stream(rel, span=(start, stop)):
                    await asyncio.to_thread(_placed, fd, data, offset)  # the event loop keeps fetching
                    offset += len(data)
                    count(data)
            done.add(start)
            async with in_order:  # the digest takes the parts in order, read back from the page cache
                while hashed[0] in done:
                    begin, end = hashed[0], ends[hashed[0]]
                    await asyncio.to_thread(_hash_back, fd, digest, begin, end)
                    hashed[0] = end

        await asyncio.gather(*(piece(start, stop) for start, stop in parts))

    async def one(rel: str) -> None:
        async with open_files:
            size, final = files[rel]["size"], staging / rel
            partial = final.with_name(final.name + ".part")
            partial.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            digest, parts = hashlib.sha256(), sizes.parts(size)
            try:
                if len(parts) == 1:
                    await whole(rel, fd, digest)
                else:
                    os.ftruncate(fd, size)
                    await ranged(rel, fd, digest, parts)
                length = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if length != size or digest.hexdigest() != files[rel]["sha256"]:
                partial.unlink()
                raise StoreError(
                    f"{objects.where(rel)}: its size or sha256 is not the manifest's (changed while pulled, or "
                    f"damaged); `canonstore verify {objects.url}`, then pull again"
                )
            os.replace(partial, final)

    # the root zarr.json first (a store without one, a publish under way, is refused before any large download),
    # then largest first
    order = sorted(files, key=lambda rel: (rel != "zarr.json", -files[rel]["size"]))
    await asyncio.gather(*(one(rel) for rel in order))
    return received[0]
