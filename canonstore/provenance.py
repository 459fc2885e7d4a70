"""Which code made a thing: package versions and the git commit of the canonstore checkout (stores, runs)."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    if not (_CHECKOUT / "pyproject.toml").is_file() or not (_CHECKOUT / ".git").exists():
        return None  # installed from a wheel: no checkout to ask
    try:
        return subprocess.run(
            ["git", *args], cwd=_CHECKOUT, text=True, capture_output=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    """The commit of the canonstore checkout this code runs from; None when installed from a wheel."""
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> bool | None:
    """Whether tracked files differ from that commit (results may then not be reproducible from it)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def package_version(package: str) -> str | None:
    """The installed version of `package`; None when it is not installed (a source tree, a missing tool)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
