"""The Makefile is a real DAG: a rebuild happens when, and only when, the recipe or an input changes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, demo_recipe

pytestmark = pytest.mark.slow  # runs make, which starts the CLI several times

VENV = Path(sys.prefix)


def make(*args: str) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), f"VENV={VENV}", *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def installed():
    if shutil.which("make") is None or not (VENV / ".installed").exists():
        pytest.skip("needs GNU make and an environment installed by `make env`")


def test_help_is_the_default_and_lists_every_target(installed):
    """Every target the Makefile declares phony, each under its own name (digits included: bench-remote-s3rver)."""
    out = make()
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    targets = phony.split(":", 1)[1].split()
    assert {"help", "env", "intermediate", "train", "bench", "bench-remote-s3rver", "test"} <= set(targets)
    for target in targets:
        assert f"  {target} " in out


def test_train_passes_the_variables_to_the_cli(installed, tiny_store):
    store = f"STORE={tiny_store}"
    plain = make("-n", "train", store)
    assert "train --config configs/default.yaml --model unet" in plain and "--set" not in plain
    given = make(
        "-n",
        "evaluate",
        store,
        "MODEL=mlp",
        "EPOCHS=3",
        "LR=1e-4",
        "LEAD=[1,2,4]",
        "LOADER=netcdf",
        "WORKERS=4",
        "SCHEDULER=constant",
        "ROLLOUT=4",
    )
    for part in (
        "--model mlp",
        "--set epochs=3",
        "--set lr=1e-4",
        "--set 'lead=[1,2,4]'",
        "--set rollout=4",
        "--set loader=netcdf",
        "--set workers=4",
        "--set scheduler=constant",
        "canonstore evaluate",
    ):
        assert part in given, part
    assert "torchrun --standalone --nproc_per_node=2 -m canonstore train" in make("-n", "train", store, "NPROC=2")
    for target in ("train", "forecast", "evaluate"):  # the same settings for each: the same run
        assert "--set 'unet.depth=1' --set 'epochs=2'" in make("-n", target, store, "SET=unet.depth=1 epochs=2")
    assert "canonstore forecast --config configs/default.yaml --model unet" in make("-n", "forecast", store)


def test_intermediate_rebuilds_only_when_recipe_or_inputs_change(installed, tmp_path, tiny_raw):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    recipe = demo_recipe(tmp_path, raw)
    store = tmp_path / "demo.zarr"
    args = (f"RECIPE={recipe}", f"STORE={store}")
    assert "wrote" in make("intermediate", *args)
    assert "Nothing to be done for 'intermediate'" in make("intermediate", *args)

    past = (raw / "t2m_2001.nc").stat().st_mtime - 100  # as if the input were touched after the build:
    os.utime(store / "manifest.json", (past, past))  # make runs the build, which finds nothing changed
    assert "up to date" in make("intermediate", *args)
    assert "Nothing to be done" in make("intermediate", *args)

    export = tmp_path / "export"
    assert "train:" in make("export", *args, f"EXPORT={export}")
    assert "Nothing to be done for 'export'" in make("export", *args, f"EXPORT={export}")

    recipe.write_text(recipe.read_text().replace("embargo: 2", "embargo: 1"))
    assert "wrote" in make("intermediate", *args)
    assert "OK" in make("verify", *args)
    assert "train:" in make("export", *args, f"EXPORT={export}")  # a new store, a new export


def test_env_installs_the_extras_asked_for(installed, tmp_path):
    assert 'mlflow = ["mlflow>=' in (ROOT / "pyproject.toml").read_text()  # the extra pip installs
    plan = make("-n", "-B", "env", "EXTRAS=mlflow", f"VENV={tmp_path / 'venv'}")  # -n: prints, runs nothing
    assert '-e ".[dev,torch,mlflow]"' in plan and f"touch {tmp_path / 'venv'}/.installed-mlflow" in plan
    assert not (tmp_path / "venv").exists()
