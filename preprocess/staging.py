"""The staging folder `<out>.partial` a build writes into: progress, per-shard markers, cleanup on failure.

Nothing is ever written at the final path directly: a failed or interrupted build leaves the previous
store (or nothing) there, and at most a `.partial` folder beside it, which records how far it got
(`progress.json`, and in `.build/` a marker per shard scanned or written) so that `build --resume` can
go on from there. What a marker claims is on disk first (fsync), so a retried task or a resumed build
never normalises a shard twice. `preprocess.publish` puts the finished folder in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

from canonstore.atomic import has_marker, leftovers, make_staging, remove_tree, write_file_atomic
from canonstore.errors import StoreError
from canonstore.formats.manifest import listed_files, store_entries

logger = logging.getLogger(__name__)

PROGRESS = "progress.json"
MARKERS = ".build"  # per-shard markers inside the staging store; removed before the manifest


def staging_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_output(out: Path) -> None:
    """Refuse to replace anything at `out` that is not wholly a canonstore store.

    A store is ours when its manifest lists every file in it, or (manifest missing or damaged) when
    its `zarr.json` says so and every file in it is one of a Zarr store's (`_not_store_files`); a store
    whose `zarr.json` is damaged can therefore be rebuilt, and one whose manifest is damaged too.
    """
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise StoreError(f"output {out} exists and is not a canonstore store; move it away or choose --out")
    listed = listed_files(out)
    if listed is not None:
        files, others = store_entries(out)
        extra = [rel for rel in files if rel not in listed] + [rel for rel, _ in others]
        if extra:
            raise StoreError(
                f"output {out} holds files that are not the store's ({', '.join(extra[:3])}"
                f"{' ...' if len(extra) > 3 else ''}); canonstore replaces only what it made: move "
                "them out of the store, then build again"
            )
        return
    try:
        root = json.loads((out / "zarr.json").read_text())
        attrs = root.get("attributes", {})
    except (OSError, ValueError, AttributeError):
        raise StoreError(f"output {out} exists and is not a canonstore store; move it away or choose --out") from None
    if "canonstore" not in attrs:
        raise StoreError(f"output {out} is a Zarr store not made by canonstore; refusing to replace it")
    foreign = _not_store_files(out, root)
    if foreign:  # without a manifest nothing says which files are the store's: only a store's shape is
        raise StoreError(
            f"output {out} has no readable manifest and holds files that are not a Zarr store's "
            f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); canonstore replaces only what it "
            "made: move them out of the store, then build again"
        )


def _not_store_files(out: Path, root: dict) -> list[str]:
    """The entries of `out` that its Zarr v3 store does not have: anything but the root `zarr.json` and, for each
    array its consolidated metadata lists (canonstore writes it), the array's `zarr.json` and chunks under `c/`;
    and every link or special file."""
    files, others = store_entries(out)
    arrays = set(((root.get("consolidated_metadata") or {}).get("metadata")) or {})

    def a_stores(rel: str) -> bool:
        head, _, rest = rel.partition("/")
        return rel == "zarr.json" or (head in arrays and (rest == "zarr.json" or rest.startswith("c/")))

    return [rel for rel in files if not a_stores(rel)] + [rel for rel, _ in others]


def new_staging(out: Path) -> Path:
    """A new, empty, marked staging folder for `out`; a previous one is removed if it is ours, else refused."""
    return make_staging(staging_path(out), "store")


def clear_leftovers(out: Path) -> None:
    """Remove what a kill during a publish left beside `out` (call it holding the build lock): the old
    store, swapped to `<out>.partial` (no progress file there: nothing to resume) or renamed to
    `<out>.old-<pid>`, wholly or partly removed. Only folders with our marker are touched."""
    staging = staging_path(out)
    found = leftovers(out) + ([staging] if staging.is_dir() and not (staging / PROGRESS).exists() else [])
    for folder in found:
        if has_marker(folder, "store"):
            logger.info(f"removing {folder}: left by an interrupted build")
            remove_tree(folder)


def save_progress(staging: Path, state: dict) -> None:
    """Record resumable state (JSON), atomically and durably: the caller has flushed the data it describes."""
    write_file_atomic(staging / PROGRESS, json.dumps(state))


def load_progress(staging: Path) -> dict | None:
    try:
        return json.loads((staging / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def cleanup_on_failure(staging: Path):
    """On any failure remove the staging store, so nothing half-built is left; keep it for `--resume`
    when the build was interrupted (Ctrl-C) or lost its workers (an error with `keep_staging`)."""
    try:
        yield
    except KeyboardInterrupt:
        logger.warning(f"interrupted: {staging} kept; `canonstore build --resume` goes on from its last shard")
        raise
    except OSError as exc:  # disk full, read-only, quota: say where, keep nothing
        shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(f"cannot write the store at {exc.filename or staging}: {exc.strerror or exc}") from exc
    except BaseException as exc:
        if not getattr(exc, "keep_staging", False):
            shutil.rmtree(staging, ignore_errors=True)
        raise


def marker(staging: str | Path, name: str) -> Path:
    return Path(staging, MARKERS, name)


def mark_written(staging: str | Path, k: int, entry: dict) -> None:
    """Say that shard `k` is written (its manifest `entry`); call it once the shard file is synced."""
    write_file_atomic(marker(staging, f"shard-{k}.json"), json.dumps(entry))


def written_entry(staging: str | Path, k: int) -> dict | None:
    """Shard `k`'s manifest entry if an earlier task (or build) wrote it completely, else None."""
    try:
        return json.loads(marker(staging, f"shard-{k}.json").read_text())
    except (OSError, ValueError):
        return None


def written_shards(staging: str | Path) -> list[int]:
    """The shards of a staging store that are completely written (for progress and tests)."""
    return sorted(int(p.stem.split("-")[1]) for p in Path(staging, MARKERS).glob("shard-*.json"))


def mark_normalising(staging: str | Path, k: int) -> None:
    """Say that shard `k`'s raw values may be normalised in place from now on (never twice)."""
    write_file_atomic(marker(staging, f"normalising-{k}"), "")


def normalising_began(staging: str | Path, k: int) -> bool:
    return marker(staging, f"normalising-{k}").exists()


def clear_progress(staging: Path) -> None:
    """Remove the markers and `progress.json`: the store's own files only, from here on."""
    shutil.rmtree(Path(staging, MARKERS), ignore_errors=True)
    (staging / PROGRESS).unlink()
