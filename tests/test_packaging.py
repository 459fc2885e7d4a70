"""The wheel installs ONE namespace, canonstore.*, and no top-level `formats` or `splits`."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # builds a wheel and a fresh virtual environment


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("canonstore-*.whl"))


def test_wheel_has_only_the_canonstore_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"canonstore"}
    for sub in ("preprocess", "formats", "splits", "loaders"):
        assert f"canonstore/{sub}/__init__.py" in names
    assert "canonstore/formats/FORMAT.md" in names


def test_wheel_imports_from_a_fresh_venv_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True
    )
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies (xarray, zarr, ...) come from this environment, after the fresh site-packages
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = (
        "import canonstore, canonstore.formats, canonstore.preprocess, canonstore.splits\n"
        "print(canonstore.formats.__file__)\n"
        "import importlib.util as u\n"
        "print([m for m in ('formats', 'preprocess', 'splits', 'loaders') if u.find_spec(m)])\n"
    )
    result = subprocess.run([py, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    location, leaked = result.stdout.splitlines()
    assert location.startswith(site) and location.endswith("canonstore/formats/__init__.py")
    assert leaked == "[]"
