"""A store on object storage (`s3://bucket/prefix/name.zarr`), read where it is: its metadata, statistics and
splits, and `to_xarray()` lazily; `.array` and the loaders need it on local disk (`canonstore pull`).

The store is opened from its manifest and root `zarr.json` (FORMAT.md, "On object storage"): the root must be
the one the manifest lists, and every whole object read later (metadata documents, the small arrays) must have
the manifest's sha256, so that a reader never mixes two builds' labels or statistics. Ranged reads of `data`'s
shards are not checked (a shard cannot be hashed in part); `verify` and `pull` check every object.
`remote_problems` is `verify`'s comparison of the objects with the manifest.
"""

from __future__ import annotations

import hashlib
import json

from zarr.storage import ObjectStore

from canonstore._progress import progress as progress_bar
from canonstore.atomic import MARKER
from canonstore.errors import StoreError
from canonstore.formats.manifest import MANIFEST, checked_files
from canonstore.objects import Objects, bounded, run_async

STREAM = 8 << 20  # bytes per piece when hashing a large object as it streams in


def pull_first(url: str, what: str) -> str:
    """The one line that says `what` needs the store on local disk."""
    return (
        f"{url}: {what} needs the store on local disk (memory-mapped); copy it first: "
        f"canonstore pull {url} DEST.zarr, then open DEST.zarr (metadata, statistics, splits and "
        "to_xarray() work on the URL itself)"
    )


def changed(url: str, key: str) -> StoreError:
    return StoreError(
        f"{url}/{key}: differs from the manifest the reader opened (a new build was published, or is being "
        f"published, at {url}); open the store again"
    )


class ManifestCheckedStore(ObjectStore):
    """zarr's read-only ObjectStore whose whole-object reads must have the sha256 the manifest lists, and whose
    reads of an object the manifest lists but the bucket lacks are an error (zarr alone gives the fill value)."""

    def __init__(self, store, *, read_only: bool = True, files: dict | None = None, url: str = ""):
        super().__init__(store, read_only=True)
        self.files, self.url = files or {}, url

    def with_read_only(self, read_only: bool = False) -> ManifestCheckedStore:
        return type(self)(self.store, files=self.files, url=self.url)

    async def get(self, key, prototype, byte_range=None):
        buffer = await super().get(key, prototype, byte_range)
        if buffer is None and key in self.files:  # zarr would read a listed object that is gone as NaN, the fill
            raise StoreError(
                f"{self.url}/{key}: listed in the manifest but missing (Zarr would read it as the fill value, NaN); "
                f"a new build is being published there, or the store is damaged: `canonstore verify {self.url}`"
            )
        whole = buffer is not None and byte_range is None and key in self.files
        if whole and hashlib.sha256(buffer.to_bytes()).hexdigest() != self.files[key]["sha256"]:
            raise changed(self.url, key)
        return buffer


def interrupted(url: str) -> str:
    return (
        f"{url}: a publish is under way or was interrupted after its upload (the root zarr.json is missing and "
        f"canonstore's {MARKER} is there): no store opens here; wait for the publish to end, or build again to "
        "publish it"
    )


def open_remote(url: str) -> tuple[ManifestCheckedStore, bytes]:
    """A zarr store reading the canonstore store at `url`, checked against its manifest; and the manifest's bytes."""
    objects = Objects(url)
    root = objects.read("zarr.json")
    files, manifest = remote_manifest(objects)
    if root is None:
        raise absent(objects, "zarr.json")
    if hashlib.sha256(root).hexdigest() != files["zarr.json"]["sha256"]:
        raise changed(url, "zarr.json")
    return ManifestCheckedStore(objects.store, files=files, url=str(url)), manifest


def remote_manifest(objects: Objects) -> tuple[dict, bytes]:
    """(files, bytes) of the manifest of the store at `objects.url`, its keys checked (`checked_files`); one line
    for a missing store, bucket or manifest, or an interrupted publish."""
    url = objects.url
    manifest = objects.read(MANIFEST)
    if manifest is None:
        raise absent(objects, MANIFEST)
    try:
        files = checked_files(json.loads(manifest), url)
        files["zarr.json"]["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{url}/{MANIFEST}: not a canonstore manifest ({exc})") from None
    return files, manifest


def absent(objects: Objects, missing: str) -> StoreError:
    """Why object `missing` of the store at `objects.url` is not there, in one line."""
    if objects.read(MARKER) is not None:
        return StoreError(interrupted(objects.url))
    if not objects.list():
        return StoreError(f"{objects.url}: no such store (no object under that prefix)")
    return StoreError(f"{objects.url}: no {missing}: the store is incomplete or was not made by canonstore")


def remote_problems(url: str, checksums: bool = True, progress: bool = False, limit: int = 8) -> list[str]:
    """Problems found comparing the objects at `url` with its manifest: missing, unlisted, other sizes, and
    (`checksums`) other sha256, each object streamed and hashed, `limit` at a time."""
    objects = Objects(url)
    raw = objects.read(MANIFEST)
    found = objects.list()
    if raw is None:
        if MARKER in found:
            return [interrupted(url)]
        return [f"{url}: no {MANIFEST}" + ("" if found else " (no object under that prefix: no such store)")]
    try:
        files = checked_files(json.loads(raw), url)
    except (ValueError, KeyError, TypeError, StoreError) as exc:
        return [f"{url}/{MANIFEST}: cannot read the manifest: {exc}"]
    found.pop(MANIFEST, None)
    problems = [f"{rel}: listed in the manifest but missing" for rel in sorted(set(files) - set(found))]
    problems += [f"{rel}: not listed in the manifest" for rel in sorted(set(found) - set(files))]
    if MARKER in found:
        problems.append(f"{MARKER}: a publish to {url} is under way or was interrupted; build again")
    same = sorted(rel for rel in set(files) & set(found) if found[rel] == files[rel]["size"])
    problems += [
        f"{rel}: size {found[rel]} bytes, manifest says {files[rel]['size']}"
        for rel in sorted(set(files) & set(found))
        if found[rel] != files[rel]["size"]
    ]
    if checksums:
        with progress_bar(len(same), "verify", "object", enabled=progress) as bar:
            digests = run_async(bounded(same, lambda rel: _sha256(objects, rel, bar), limit))
        problems += [
            f"{rel}: sha256 differs from the manifest (object changed or damaged)"
            for rel, digest in zip(same, digests)
            if digest != files[rel]["sha256"]
        ]
    return problems


async def _sha256(objects: Objects, rel: str, bar) -> str:
    import obstore

    digest = hashlib.sha256()
    try:
        result = await obstore.get_async(objects.store, rel)
        async for piece in result.stream(min_chunk_size=STREAM):
            digest.update(piece)
    except Exception as exc:
        raise objects.fail(exc, rel) from None
    bar.update(1)
    return digest.hexdigest()
