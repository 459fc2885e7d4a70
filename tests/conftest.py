"""Shared fixtures: a tiny demo raw dataset, recipe writing, and the real files in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from canonstore.preprocess import build
from canonstore.preprocess.demo import write_demo

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """Demo raw files on an 8x16 grid, 3 years (2000-2002), written once per session."""
    return write_demo(tmp_path_factory.mktemp("raw") / "demo", size=1 / 16, years=(2000, 2001, 2002))


def write_recipe(folder: Path, **keys) -> Path:
    """Write a recipe YAML into `folder`; keys are recipe keys (see README)."""
    keys.setdefault("name", "test")
    path = folder / f"{keys['name']}.yaml"
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


def demo_recipe(folder: Path, raw: Path, **overrides) -> Path:
    keys = {"name": "demo", "sources": [str(raw / "*.nc")], "static": ["lsm", "orography"],
            "splits": {"train": [2000, 2000], "val": [2001, 2001], "test": [2002, 2002], "embargo": 2},
            "storage": {"shard_mb": 1}}
    keys.update(overrides)
    return write_recipe(folder, **keys)


@pytest.fixture(scope="session")
def tiny_store(tiny_raw, tmp_path_factory) -> Path:
    """The tiny demo built once (small shard_mb so that the build streams several blocks)."""
    folder = tmp_path_factory.mktemp("store")
    out = folder / "demo.zarr"
    build(demo_recipe(folder, tiny_raw), out, progress=False, log=lambda *_: None)
    return out


@pytest.fixture
def real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real NetCDF samples not found at {REAL} (they live in ../shared/data/real)")
    return REAL
