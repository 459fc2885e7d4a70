"""WeatherBench 2-shaped sources for the Zarr tests and `bench/remote.py`, and a real S3 server to serve them.

`wb2_dataset` is WB2's layout (long names, `level` in hPa, latitude ascending, geopotential with longitude before
latitude, 6-hourly); `as_netcdf` is the same values in the ERA5 NetCDF convention (t2m, z). `S3Server` runs moto's
S3 server on 127.0.0.1 (a real HTTP server; nothing is patched in the client), and `upload` copies a local
store into a bucket object by object.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

LEVELS = [50, 100, 250, 500, 850]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def wb2_dataset(
    steps: int = 48, nlat: int = 4, nlon: int = 8, start: str = "2000-01-01", seed: int = 0, levels=LEVELS
) -> xr.Dataset:
    """`2m_temperature(time, latitude, longitude)` and `geopotential(time, level, longitude, latitude)`."""
    rng = np.random.default_rng(seed)
    time = pd.date_range(start, periods=steps, freq="6h")
    lat = np.linspace(-67.5, 67.5, nlat)  # ascending, as WB2's
    lon = np.arange(nlon) * 360.0 / nlon
    t2m = (280 + 10 * rng.standard_normal((steps, nlat, nlon))).astype(np.float32)
    z = (np.array(levels)[None, :, None, None] * 100 + rng.standard_normal((steps, len(levels), nlon, nlat))).astype(
        np.float32
    )
    return xr.Dataset(
        {
            "2m_temperature": (("time", "latitude", "longitude"), t2m, {"units": "K"}),
            "geopotential": (("time", "level", "longitude", "latitude"), z, {"units": "m**2 s**-2"}),
        },
        coords={
            "time": time,
            "level": ("level", np.array(levels, dtype=np.int64), {"units": "hPa"}),
            "latitude": ("latitude", lat, {"units": "degrees_north"}),
            "longitude": ("longitude", lon, {"units": "degrees_east"}),
        },
    )


def write_zarr(ds: xr.Dataset, path: Path, zarr_format: int = 3, time_chunk: int = 4) -> Path:
    """`ds` as a Zarr store chunked (time_chunk, 1 level, whole grid), with consolidated metadata."""
    encoding = {
        "2m_temperature": {"chunks": (time_chunk, ds.sizes["latitude"], ds.sizes["longitude"])},
        "geopotential": {"chunks": (time_chunk, 1, ds.sizes["longitude"], ds.sizes["latitude"])},
    }
    ds.to_zarr(path, zarr_format=zarr_format, consolidated=True, encoding=encoding, mode="w")
    return path


def as_netcdf(ds: xr.Dataset, path: Path) -> Path:
    """The same values in ERA5 NetCDF's convention: short names, (time, level, latitude, longitude)."""
    out = ds.rename({"2m_temperature": "t2m", "geopotential": "z"})
    out["z"] = out["z"].transpose("time", "level", "latitude", "longitude")
    out.to_netcdf(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server on 127.0.0.1 at a free port, as a context manager; `env` points the AWS_* variables at it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def env(self) -> dict:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ALLOW_HTTP": "true"}

    def __enter__(self) -> S3Server:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


def make_bucket(name: str) -> None:
    """Create bucket `name` on the server the AWS_* variables point at (obstore cannot create buckets)."""
    import os
    import urllib.request

    request = urllib.request.Request(f"{os.environ['AWS_ENDPOINT_URL']}/{name}", method="PUT")
    urllib.request.urlopen(request).close()  # moto accepts an unsigned CreateBucket


def upload(local: Path, url: str) -> str:
    """Copy the store at `local` to `url` (s3://bucket/prefix) object by object; returns `url`."""
    import obstore

    from canonstore.remote import URL, s3_store

    store = s3_store(URL(url))
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        obstore.put(store, path.relative_to(local).as_posix(), path.read_bytes())
    return url
