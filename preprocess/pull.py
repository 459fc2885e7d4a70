"""`canonstore pull s3://.../name.zarr DEST.zarr`: a store on object storage copied to local disk, for
memory-mapped training (FORMAT.md, "On object storage").

Each object is fetched in ranged parts of `part_mb` MiB, `limit` requests in flight across all objects, written in
place into `<rel>.part` inside the staging folder `DEST.zarr.partial` (canonstore's marker, as a build's), then
synced, hashed and renamed to `<rel>` only when its size and sha256 are the manifest's. A killed pull therefore
goes on from every file it completed (checked again by size and sha256); `.part` files and files that do not
match are fetched again. The manifest is written last, the folder verified and published by the same swap as a
build (`atomic.replace_folder`). An existing DEST must be a canonstore store; one of the same build is kept.

    pull("s3://bucket/wb2/era5.zarr", "data/era5.zarr")     # -> PullResult(path, files, fetched, kept, seconds)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from canonstore._progress import progress as progress_bar
from canonstore.atomic import MARKER, has_marker, make_staging, replace_folder, write_file_atomic
from canonstore.errors import StoreError
from canonstore.formats.manifest import MANIFEST, file_sha256, inside
from canonstore.formats.remote_store import open_remote
from canonstore.formats.verify import verify_store
from canonstore.objects import LIMIT, Objects, run_async
from canonstore.preprocess.lock import build_lock
from canonstore.preprocess.staging import check_output, staging_path
from canonstore.remote import URL

logger = logging.getLogger(__name__)

PART_MB = 8.0  # bytes per ranged request: large enough to amortise a request, small enough to spread one shard


@dataclass
class PullResult:
    """What `pull` put at `path`: `files` in all, `fetched` bytes downloaded now, `kept` files already complete."""

    path: Path
    files: int
    fetched: int
    kept: int
    seconds: float


def pull(url: str, dest: str | Path, progress: bool = True, limit: int = LIMIT, part_mb: float = PART_MB) -> PullResult:
    """Copy the store at `url` to the local folder `dest` (see the module docstring)."""
    began = time.perf_counter()
    url, dest = URL(str(url).rstrip("/")), Path(dest)
    _, raw = open_remote(url)  # one line for a missing store, bucket or key, or an interrupted publish
    files = json.loads(raw)["files"]  # its keys checked by open_remote
    with build_lock(dest):
        check_output(dest)
        if (dest / MANIFEST).is_file() and (dest / MANIFEST).read_bytes() == raw:
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
            fetched = run_async(_fetch(Objects(url), staging, {rel: files[rel] for rel in todo}, limit, part_mb, bar))
        write_file_atomic(staging / MANIFEST, raw)  # verbatim: the local store has the same build id
        problems = verify_store(staging, checksums=False)  # every file was hashed as it arrived
        if problems:
            raise StoreError(f"{staging}: the pulled store failed verification: {'; '.join(problems[:5])}")
        replace_folder(staging, dest, "store")
    seconds = time.perf_counter() - began
    rate = fetched / 1e6 / max(seconds, 1e-9)
    logger.info(f"pulled {url} to {dest}: {fetched / 1e6:.1f} MB in {seconds:.1f} s ({rate:.1f} MB/s)")
    return PullResult(dest, len(files), fetched, len(kept), seconds)


def _synced_sha256(fd: int, path: Path) -> str:
    os.fsync(fd)  # on disk before it is renamed to its final name (resumes re-hash it anyway)
    return file_sha256(path)


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


async def _fetch(objects: Objects, staging: Path, files: dict, limit: int, part_mb: float, bar) -> int:
    """Every file of `files`, in ranged parts, `limit` requests in flight (and at most 2 x `limit` files open);
    returns the bytes received."""
    requests, open_files, received = asyncio.Semaphore(limit), asyncio.Semaphore(2 * limit), [0]
    part = max(1, int(part_mb * (1 << 20)))

    async def one(rel: str) -> None:
        async with open_files:
            size, final = files[rel]["size"], staging / rel
            partial = final.with_name(final.name + ".part")
            partial.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                os.ftruncate(fd, size)

                async def piece(start: int) -> None:
                    async with requests:
                        data = await objects.get_range(rel, start, min(start + part, size))
                    await asyncio.to_thread(os.pwrite, fd, data, start)  # the event loop keeps fetching
                    received[0] += len(data)
                    bar.update(len(data))

                await asyncio.gather(*(piece(start) for start in range(0, size, part)))
                digest = await asyncio.to_thread(_synced_sha256, fd, partial)
            finally:
                os.close(fd)
            if digest != files[rel]["sha256"]:
                partial.unlink()
                raise StoreError(
                    f"{objects.where(rel)}: its sha256 is not the manifest's (changed while pulled, or damaged); "
                    f"`canonstore verify {objects.url}`, then pull again"
                )
            os.replace(partial, final)

    await asyncio.gather(*(one(rel) for rel in files))
    return received[0]
