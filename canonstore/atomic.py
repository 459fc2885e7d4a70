"""Put a finished folder in place in one rename, so readers see the old one or the new one, never half."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_folder(staging: Path, out: Path) -> None:
    """Move the complete folder `staging` to `out`; an existing `out` is moved aside first and removed after."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old)
    else:
        os.rename(staging, out)
