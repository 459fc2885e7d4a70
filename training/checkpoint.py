"""Checkpoints: plain tensors and numbers only, written atomically, read with `weights_only=True`.

A checkpoint holds the model, optimizer and scheduler states, where in training it was taken
(epoch, batch, step), the early-stopping state and the history of metrics so far: everything a
resumed run needs to end exactly where an uninterrupted one would. Nothing is pickled, so loading
one never runs code (torch >= 2.10: older releases had `weights_only` bypasses).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from canonstore.atomic import write_file_atomic_with
from canonstore.errors import ConfigError, RunError

FORMAT = 1


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` atomically and durably: a kill mid-write leaves the old one."""
    write_file_atomic_with(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` (tensors mapped to `device`)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise RunError(f"{path}: not a readable canonstore checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunError(f"{path}: not a canonstore checkpoint (format {FORMAT} expected)")
    return state


def initial_weights(path: str | Path) -> dict:
    """Which weights a fine-tuning run starts from: a run folder (its best.pt) or a checkpoint file.

    Returns {"path", "run", "sha256"}: the run's name and the file's sha256 identify the weights
    (a run hash built from them changes when they do; the path does not count)."""
    path = Path(path)
    file = path / "checkpoints" / "best.pt" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"init: {path} is neither a run folder with checkpoints/best.pt nor a checkpoint file")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return {"path": str(file), "run": load_checkpoint(file).get("name"), "sha256": digest}
