"""Shared fixtures: the tiny demo raw files and stores built once per session, and the real files in
../shared. Plain helper functions live in tests/helpers.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from canonstore.preprocess import build
from canonstore.preprocess.demo import write_demo
from tests.helpers import REAL, demo_recipe, gappy_values, write_recipe

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n N` (make test) N workers share N cores: one thread each for torch, OpenMP and BLAS
    # instead of N x N threads fighting. Nothing has imported torch yet; subprocesses inherit it.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


@pytest.fixture
def said(caplog):
    """What the library says at INFO and above (its log messages, canonstore's loggers only), so far in the test:
    `said()` -> ["wrote ...", ...]."""
    caplog.set_level(logging.INFO, logger="canonstore")
    return lambda: [r.getMessage() for r in caplog.records if r.name.split(".")[0] == "canonstore"]


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """Demo raw files on an 8x16 grid, 3 years (2000-2002), written once per session."""
    return write_demo(tmp_path_factory.mktemp("raw") / "demo", size=1 / 16, years=(2000, 2001, 2002))


@pytest.fixture(scope="session")
def tiny_store(tiny_raw, tmp_path_factory) -> Path:
    """The tiny demo built once (small shard_mb so that the build streams several blocks)."""
    folder = tmp_path_factory.mktemp("store")
    out = folder / "demo.zarr"
    build(demo_recipe(folder, tiny_raw), out, progress=False)
    return out


@pytest.fixture
def real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real NetCDF samples not found at {REAL} (they live in ../shared/data/real)")
    return REAL


@pytest.fixture(scope="session")
def gappy_store(tmp_path_factory) -> Path:
    """Daily x and y on a 2x3 grid, 2000-2002, July 2000 missing (`time_gaps: allow`), x with NaNs
    that come and go (`nan_policy: fill`: an `x_valid` channel). Train 2000, val 2001, test 2002."""
    folder = tmp_path_factory.mktemp("gappy")
    times = pd.date_range("2000-01-01", "2002-12-31", freq="D")
    times = times[(times < "2000-07-01") | (times >= "2000-08-01")]
    values = gappy_values(times.size)
    xr.Dataset(
        {
            "x": (("time", "lat", "lon"), values[:, 0], {"units": "K"}),
            "y": (("time", "lat", "lon"), values[:, 1], {"units": "m s-1"}),
        },
        coords={
            "time": times,
            "lat": ("lat", [10.0, 60.0], {"units": "degrees_north"}),
            "lon": ("lon", [0.0, 120.0, 240.0], {"units": "degrees_east"}),
        },
    ).to_netcdf(folder / "xy.nc")
    recipe = write_recipe(
        folder,
        name="gappy",
        sources=["xy.nc"],
        time_gaps="allow",
        nan_policy="fill",
        splits={"train": [2000, 2000], "val": [2001, 2001], "test": [2002, 2002]},
    )
    return build(recipe, folder / "gappy.zarr", progress=False).path


@pytest.fixture(scope="session")
def short_hourly_store(tmp_path_factory) -> Path:
    """20 days of hourly t2m on a 4x8 grid: a diurnal cycle (3 K) plus white noise (1 K), nothing
    else; train 1-12 January 2020, val 13-16, test 17-20. Far shorter than a year."""
    folder = tmp_path_factory.mktemp("short")
    times = pd.date_range("2020-01-01", periods=20 * 24, freq="h")
    cycle = 3 * np.cos(2 * np.pi * (times.hour.to_numpy() - 14) / 24)[:, None, None]
    t2m = 280 + cycle + np.random.default_rng(3).normal(size=(times.size, 4, 8))
    xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), t2m.astype(np.float32), {"units": "K"})},
        coords={
            "time": times,
            "latitude": ("latitude", [45.0, 15.0, -15.0, -45.0], {"units": "degrees_north"}),
            "longitude": ("longitude", np.arange(8) * 45.0, {"units": "degrees_east"}),
        },
    ).to_netcdf(folder / "t2m.nc")
    recipe = write_recipe(
        folder,
        name="short",
        sources=["t2m.nc"],
        splits={
            "by": "dates",
            "train": ["2020-01-01", "2020-01-12"],
            "val": ["2020-01-13", "2020-01-16"],
            "test": ["2020-01-17", "2020-01-20"],
        },
    )
    return build(recipe, folder / "short.zarr", progress=False).path


@pytest.fixture(scope="session")
def nrcan_store(tmp_path_factory) -> Path:
    """The real NRCAN file (yearly, 84x276 over south-east Canada, longitude -83..-60: a regional grid),
    NaNs filled; built once per session. Skipped when ../shared/data/real is absent."""
    if not REAL.is_dir():
        pytest.skip(f"real NetCDF samples not found at {REAL} (they live in ../shared/data/real)")
    folder = tmp_path_factory.mktemp("nrcan")
    recipe = write_recipe(
        folder,
        name="nrcan",
        sources=[str(REAL / "NRCAN_SECan_1981-2010.nc")],
        nan_policy="fill",
        splits={"train": [1981, 2000], "val": [2001, 2005], "test": [2006, 2010]},
    )
    return build(recipe, folder / "nrcan.zarr", progress=False).path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto's, over HTTP on 127.0.0.1), started once per session."""
    pytest.importorskip("moto.server")
    from tests.wb2 import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch) -> str:
    """The AWS_* variables pointed at the server and a fresh bucket; gives its name."""
    from tests.wb2 import make_bucket

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    bucket = f"b{os.urandom(4).hex()}"
    make_bucket(bucket)
    return bucket
