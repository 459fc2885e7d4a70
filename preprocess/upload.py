"""`build --out s3://bucket/prefix/name.zarr`: the same build, in a local temporary folder, then published to
object storage in two phases (FORMAT.md, "On object storage"):

1. upload into `name.zarr.partial/` (canonstore's marker first, the root `zarr.json` last): the store at the
   URL is untouched, so a kill leaves the previous build readable and verifiable;
2. swap by server-side copies: marker at the root, the root and other `zarr.json` and the manifest deleted
   (nothing opens from here), changed objects copied and stale ones deleted, then metadata, manifest and the
   root `zarr.json` copied last: the one write that makes the build visible; marker and staging removed.

Only objects canonstore made are ever deleted or overwritten: those the previous build's manifest lists, and
those under a marker of its own (`atomic.MARKER`); anything else under the URL is refused by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from canonstore.atomic import MARKER
from canonstore.errors import StoreError
from canonstore.formats.manifest import MANIFEST, read_manifest
from canonstore.objects import Objects, parent_and_name
from canonstore.preprocess.inputs import input_records, up_to_date
from canonstore.preprocess.lock import build_lock
from canonstore.preprocess.publish import BuildResult
from canonstore.preprocess.recipe import Recipe
from canonstore.preprocess.remote_lock import remote_lock
from canonstore.preprocess.upload_staging import upload_folder

logger = logging.getLogger(__name__)

ROOT = "zarr.json"
COPY_LIMIT = 5 * 2**30  # S3's CopyObject copies at most 5 GiB in one request (larger needs a multipart copy)


def publish_build(
    recipe: Recipe, url: str, force: bool, build_local: Callable[[Path], BuildResult], force_unlock: bool = False
):
    """Build `recipe` with `build_local(path)` into a temporary folder and publish it at `url`, unless the store
    there is up to date (same recipe and inputs). The target is checked and the URL locked (`publish_locks`)
    before anything is built."""
    parent, name = parent_and_name(url)
    objects = Objects(parent)
    check_target(objects, name)  # a missing bucket or wrong credentials: one line, before any lock
    with publish_locks(url, force_unlock):
        return _build_and_publish(recipe, url, force, build_local, objects, name)


def _build_and_publish(recipe, url, force, build_local, objects: Objects, name: str):
    unfinished = _finish_publish(objects, name)
    previous = _root_attrs(objects, name)
    inputs = input_records(recipe.sources, (previous or {}).get("inputs", []))
    if not force and not unfinished and up_to_date(previous, recipe, inputs):
        logger.info(f"{url} is up to date (same recipe and inputs); nothing to do")
        return BuildResult(url, built=False)
    with upload_folder() as folder:  # TMPDIR chooses the disk; a killed build's folder is removed by the next
        result = build_local(folder / name)
        _publish(result.path, url, keep_unchanged=not force)  # forced: every object copied, a damaged one too
    logger.info(f"published {url}")
    return dataclasses.replace(result, path=url)


def publish_url(local: Path, url: str, force_unlock: bool = False) -> None:
    """Publish the complete local store at `local` to `url`, in the two phases of the module docstring; one
    publish per URL at a time (`publish_locks`)."""
    with publish_locks(url, force_unlock):
        _publish(local, url)


@contextlib.contextmanager
def publish_locks(url: str, force_unlock: bool = False):
    """This machine's lock of `url` (`publish_lock`), then the lock object beside the store, which keeps out
    publishers on other machines (`preprocess.remote_lock`; `force_unlock` removes a killed one's)."""
    parent, name = parent_and_name(url)
    with publish_lock(url), remote_lock(Objects(parent), name, force_unlock):
        yield


def publish_lock(url: str):
    """The build lock (`preprocess.lock`) of a file in the temp folder named by `url`'s hash: a second publish of
    the same URL from this machine is refused while the first runs (other machines: `publish_locks`)."""
    path = Path(tempfile.gettempdir()) / f"canonstore-publish-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
    return build_lock(path, what=f"publish of {url}")


def _publish(local: Path, url: str, keep_unchanged: bool = True) -> None:
    """The two phases (module docstring). `keep_unchanged`: an object the previous build's manifest lists with the
    new one's size and sha256 is not copied again (trusting the manifest: one damaged in place stays so)."""
    parent, name = parent_and_name(url)
    objects = Objects(parent)
    files = read_manifest(local)["files"]
    build_id = hashlib.sha256((local / MANIFEST).read_bytes()).hexdigest()
    too_big = sorted((info["size"], rel) for rel, info in files.items() if info["size"] > COPY_LIMIT)
    if too_big:  # before anything is uploaded or retracted: the swap copies every object server-side
        size, rel = too_big[-1]
        raise StoreError(
            f"{url}: {rel} is {size / 2**30:.1f} GiB and S3 copies at most {COPY_LIMIT / 2**30:g} GiB in one "
            "request, which publishing needs; set the recipe's storage.shard_mb below 5120 and build again"
        )
    previous = check_target(objects, name)
    staging, store = f"{name}.partial/", f"{name}/"
    clear_staging(objects, staging)
    data, documents = _phases(files)
    objects.put(staging + MARKER, marker("upload", build_id))  # first: whatever a kill leaves is marked
    for group in (data, documents, [MANIFEST], [ROOT]):
        objects.put_files([(staging + rel, local / rel) for rel in group])
    objects.put(store + MARKER, marker("swap", build_id))
    live = _relative(objects.list(store), store)
    retract = [ROOT, *(rel for rel in documents if rel in live), MANIFEST]
    objects.delete([store + rel for rel in retract if rel in live], limit=1)  # in this order: the root first
    unchanged = {rel for rel in data if previous.get(rel) == files[rel] and live.get(rel) == files[rel]["size"]}
    unchanged = unchanged if keep_unchanged else set()
    objects.copy([(staging + rel, store + rel) for rel in data if rel not in unchanged])
    objects.delete([store + rel for rel in live if rel not in files and rel not in (MANIFEST, MARKER)])
    for group in (documents, [MANIFEST], [ROOT]):  # the root zarr.json last: the commit
        objects.copy([(staging + rel, store + rel) for rel in group])
    objects.delete([store + MARKER])
    _remove_marked(objects, staging)
    logger.info(f"{url}: {len(files) - len(unchanged)} objects published, {len(unchanged)} unchanged")


def _finish_publish(objects: Objects, name: str) -> bool:
    """Whether a publish to `name` was left unfinished (its swap marker or staging prefix is there) and must be
    done again. One killed after its root `zarr.json` was copied (the root the manifest lists) is finished here:
    its swap marker and staging prefix removed. Never "up to date" over a marker."""
    store, staging = f"{name}/", f"{name}.partial/"
    swap, staged = is_marked(objects, store, "swap"), bool(objects.list(staging))
    if not swap and not staged:
        return False
    root, raw = objects.read(store + ROOT), objects.read(store + MANIFEST)
    try:
        complete = root is not None and hashlib.sha256(root).hexdigest() == json.loads(raw)["files"][ROOT]["sha256"]
    except (TypeError, ValueError, KeyError):
        complete = False
    if not complete:
        logger.info(f"{objects.where(name)}: a publish was interrupted; publishing again")
        return True
    if swap:
        objects.delete([store + MARKER])
    clear_staging(objects, staging)
    logger.info(f"{objects.where(name)}: finished a publish killed after its last copy")
    return False


def marker(kind: str, build_id: str) -> bytes:
    """The marker object's JSON: canonstore's, of `kind` ("upload": a staging prefix; "swap": a store mid-swap)."""
    record = {
        "made_by": "canonstore",
        "kind": kind,
        "build": build_id,
        "pid": os.getpid(),
        "host": os.uname().nodename,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return json.dumps(record).encode()


def is_marked(objects: Objects, prefix: str, kind: str) -> bool:
    """Whether `prefix` holds canonstore's marker of `kind`."""
    raw = objects.read(prefix + MARKER)
    try:
        record = json.loads(raw) if raw is not None else None
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("made_by") == "canonstore" and record.get("kind") == kind


def check_target(objects: Objects, name: str) -> dict:
    """The previous build's manifest entries at `name` ({} when there is none, or a swap was interrupted);
    refuses a prefix holding objects canonstore did not make. Also where a missing bucket or wrong
    credentials are found, before any build."""
    store = f"{name}/"
    live = _relative(objects.list(store), store)
    if not live or (MARKER in live and is_marked(objects, store, "swap")):
        return {}  # empty, or every object there is ours (an interrupted swap)
    where = objects.where(name)
    try:
        manifest = json.loads(objects.read(store + MANIFEST) or b"null")
        files = manifest["files"] if manifest.get("format") == "canonstore-manifest" else None
    except (ValueError, KeyError, TypeError, AttributeError):
        files = None
    if not isinstance(files, dict):
        raise StoreError(
            f"{where} holds objects that are not a canonstore store (no canonstore manifest); canonstore replaces "
            "only what it made: choose another --out or move them away"
        )
    extra = sorted(set(live) - set(files) - {MANIFEST})
    if extra:
        raise StoreError(
            f"{where} holds objects that are not the store's ({', '.join(extra[:3])}{' ...' * (len(extra) > 3)}); "
            "canonstore replaces only what it made: move them away, then build again"
        )
    return files


def clear_staging(objects: Objects, staging: str) -> None:
    """Remove an interrupted upload's staging prefix (canonstore's marker of an upload), or refuse it by name."""
    if not objects.list(staging):
        return
    if not is_marked(objects, staging, "upload"):
        raise StoreError(
            f"{objects.where(staging)} holds objects canonstore did not make (no {MARKER} of an upload); "
            "canonstore stages its uploads there: move them away"
        )
    logger.info(f"removing {objects.where(staging)}: left by an interrupted upload")
    _remove_marked(objects, staging)


def _remove_marked(objects: Objects, prefix: str) -> None:
    """Delete everything under the marked `prefix`, the marker last (a kill leaves it recognisably ours)."""
    objects.delete([key for key in objects.list(prefix) if key != prefix + MARKER])
    objects.delete([prefix + MARKER])


def _phases(files: dict) -> tuple[list[str], list[str]]:
    """The store's files in upload order: data objects (chunks, shards), then metadata documents below the root;
    the manifest and the root `zarr.json` come after both."""
    documents = sorted(rel for rel in files if rel.rsplit("/", 1)[-1] == ROOT and rel != ROOT)
    data = sorted(rel for rel in files if rel != ROOT and rel not in documents)
    return data, documents


def _relative(listing: dict[str, int], prefix: str) -> dict[str, int]:
    return {key[len(prefix) :]: size for key, size in listing.items() if key.startswith(prefix)}


def _root_attrs(objects: Objects, name: str) -> dict | None:
    """The canonstore root attributes of the complete store at `name`, or None."""
    if objects.read(f"{name}/{MANIFEST}") is None:
        return None
    try:
        return json.loads(objects.read(f"{name}/{ROOT}") or b"null")["attributes"]["canonstore"]
    except (ValueError, KeyError, TypeError):
        return None
