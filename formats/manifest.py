"""The manifest: every file of a store with its size and sha256, written last.

It is what `make` targets (a directory's mtime says nothing about its contents) and what
`verify` checks against: zarr reads a missing chunk file silently as the fill value, so
files are counted, not only checksummed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from canonstore._progress import progress as progress_bar
from canonstore.atomic import MARKER, write_json_atomic
from canonstore.errors import StoreError

MANIFEST = "manifest.json"


def file_sha256(path: Path, block: int = 1 << 23, stop=None) -> str:
    """The file's sha256; `stop` (a threading.Event), once set, interrupts it between blocks (InterruptedError)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            if stop is not None and stop.is_set():
                raise InterruptedError(f"hashing {path} stopped")
            digest.update(chunk)
    return digest.hexdigest()


def store_entries(store: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(files, others) of `store`, relative paths, sorted: its regular files except the manifest (and a
    staging marker), and every entry that is neither a regular file nor a directory (a symbolic link, a
    FIFO, ...), with what it is. Links are never followed."""
    files, others = [], []
    for root, dirs, names in os.walk(store):  # does not descend into links to directories
        for name in dirs + names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, store).replace(os.sep, "/")
            try:
                mode = os.lstat(full).st_mode
            except FileNotFoundError:  # removed while listed
                continue
            if stat.S_ISREG(mode):
                if rel not in (MANIFEST, MARKER):
                    files.append(rel)
            elif not stat.S_ISDIR(mode):
                others.append((rel, "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"))
    return sorted(files), sorted(others)


def store_files(store: Path) -> list[str]:
    """Relative paths of all regular files in a store except the manifest, sorted."""
    return store_entries(store)[0]


def listed_files(folder: Path) -> set[str] | None:
    """The files that a canonstore manifest in `folder` lists; None when it has no readable one."""
    try:
        manifest = read_manifest(folder)
        if manifest.get("format") == "canonstore-manifest":
            return set(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def write_manifest(store: Path, known: dict | None = None, threads: int = 4) -> dict:
    """Checksum every file of `store` (in parallel) and write the manifest; returns it.

    `known` maps relative paths to entries already hashed (an append's unchanged shards, linked from
    the previous store), so that an append hashes only what it wrote.
    """
    known = known or {}
    rels = store_files(store)

    def entry(rel: str) -> dict:
        size = (store / rel).stat().st_size
        if rel in known and known[rel]["size"] == size:
            return known[rel]
        return {"size": size, "sha256": file_sha256(store / rel)}

    with ThreadPoolExecutor(threads) as pool:  # hashlib releases the GIL
        files = dict(zip(rels, pool.map(entry, rels)))
    manifest = {"format": "canonstore-manifest", "version": 2, "files": files}
    write_json_atomic(store / MANIFEST, manifest, indent=1, sort_keys=True)
    return manifest


def data_checksums(manifest: dict) -> dict[str, str]:
    """sha256 of each `data` shard file, by relative path: two builds wrote the same data iff equal."""
    return {rel: e["sha256"] for rel, e in manifest["files"].items() if rel.startswith("data/c/")}


def store_identity(store: Path) -> str:
    """A fingerprint of one build of a store (the manifest's sha256): it changes when a rebuild replaces it."""
    return hashlib.sha256((Path(store) / MANIFEST).read_bytes()).hexdigest()


def read_manifest(store: Path) -> dict:
    """The manifest of the local store `store`, its keys checked (`checked_files`)."""
    manifest = json.loads((store / MANIFEST).read_text())
    checked_files(manifest, store)
    return manifest


def _unsafe(rel) -> str | None:
    """Why `rel` cannot be a store's relative path, or None."""
    if not isinstance(rel, str) or not rel:
        return "not a relative path"
    if rel.startswith("/") or "\\" in rel or "\0" in rel or (len(rel) > 1 and rel[1] == ":"):
        return "an absolute path, a backslash or a NUL"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "an empty, '.' or '..' segment"
    return None


def checked_files(manifest: dict, where) -> dict:
    """`manifest["files"]`, every key a plain relative path inside the store (no absolute path, `..`, empty
    segment or backslash): a manifest read from disk or object storage says where files go."""
    files = manifest["files"]
    for rel in files:
        if (why := _unsafe(rel)) is not None:
            raise StoreError(f"{where}/{MANIFEST}: lists {rel!r} ({why}): not a store's file; nothing written")
    return files


def inside(folder: Path, rel: str) -> Path:
    """`folder / rel`, refused (one line) unless it resolves inside `folder` (links followed)."""
    path = folder / rel
    if not path.resolve().is_relative_to(folder.resolve()):
        raise StoreError(f"{folder}: {rel!r} of the manifest resolves outside it; nothing written there")
    return path


def check_manifest(store: Path, checksums: bool = True, progress: bool = False) -> list[str]:
    """Problems found comparing `store`'s files with its manifest (empty when all match).

    `checksums=False` compares the file list and sizes only (for a store whose manifest was just written);
    `progress`: a bar over the files (`canonstore._progress`).
    """
    try:
        files = read_manifest(store)["files"]
    except (OSError, ValueError, KeyError, StoreError) as exc:
        return [f"{store / MANIFEST}: cannot read the manifest: {exc}"]
    found, others = store_entries(store)
    present = set(found)
    problems = [
        f"{rel}: {what}, not a file of the store (a store's files are regular files inside it, which "
        "readers never leave: put the file itself back or rebuild)"
        for rel, what in others
    ]
    odd = {rel for rel, _ in others}
    problems += [f"{rel}: listed in the manifest but missing" for rel in sorted(set(files) - present - odd)]
    problems += [f"{rel}: not listed in the manifest" for rel in sorted(present - set(files))]
    checked = sorted(set(files) & present)
    for rel in progress_bar(len(checked), "verify", "file", enabled=progress, iterable=checked):
        try:
            size = (store / rel).stat().st_size
            if size != files[rel]["size"]:
                problems.append(f"{rel}: size {size} bytes, manifest says {files[rel]['size']}")
            elif checksums and file_sha256(store / rel) != files[rel]["sha256"]:
                problems.append(f"{rel}: sha256 differs from the manifest (file changed or damaged)")
        except OSError as exc:  # e.g. removed since it was listed (a rebuild: `verify_store` says so)
            problems.append(f"{rel}: cannot read it: {exc.strerror or exc}")
    return problems
