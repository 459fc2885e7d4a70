"""The end of a build or an append: seal the staged store (attributes, manifest), verify it, publish it.

An existing store is swapped with renameat2(RENAME_EXCHANGE), so `out` is never missing (see
`canonstore.atomic.replace_folder`); a reader that opened the old store keeps what it holds of it and
raises on its next read of a file (`formats.handle`). The old store is removed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from canonstore.atomic import replace_folder
from canonstore.errors import StoreError
from canonstore.formats.manifest import MANIFEST, write_manifest
from canonstore.formats.verify import verify_store
from canonstore.preprocess.metadata import finish_metadata
from canonstore.preprocess.staging import PROGRESS, clear_progress


@dataclass
class BuildResult:
    """What a build or an append published at `path`."""

    path: Path
    built: bool  # False when the store was already up to date
    steps: int = 0
    channels: int = 0
    bytes: int = 0
    seconds: float = 0.0


def publish(staging: Path, out: Path, attrs: dict, files: dict[str, dict]) -> None:
    """Seal the staging store whose shards are all written (root `attrs`; the manifest, reusing the entries of
    `files`, relative path -> {size, sha256}), verify it and put it at `out` in one step."""
    clear_progress(staging)
    finish_metadata(staging, attrs)
    write_manifest(staging, files)
    problems = verify_store(staging, checksums=False)
    if problems:
        raise StoreError(f"{staging}: the new store failed verification: {'; '.join(problems[:5])}")
    if not (staging / MANIFEST).is_file():
        raise StoreError(f"{staging}: no manifest; refusing to publish an incomplete store")
    (staging / PROGRESS).unlink(missing_ok=True)
    replace_folder(staging, out, "store")
