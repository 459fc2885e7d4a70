"""A deterministic, ERA5-like raw demo dataset in CF NetCDF, written like real downloads.

    canonstore demo-data data/raw/demo --size 1       # what `make data` runs

One file per variable and year (`z_2000.nc`, `t2m_2000.nc`, ...) plus `static.nc`
(land-sea mask, orography). Specific humidity `q` is there so that the derived relative humidity
(recipes/demo.yaml) has something to be derived from. 6-hourly steps on a global lat/lon grid; planetary waves drift
eastward, with seasonal and diurnal cycles and a little noise, so a forecast model has
something to learn that persistence misses. `msl` is packed as int16 with
scale_factor/add_offset, as ERA5 downloads often are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from canonstore.atomic import MARKER, is_empty_folder, make_staging, replace_folder
from canonstore.errors import StoreError

STAMP = ".complete"  # written last: the folder is whole
MAKE_STAMP = re.compile(r"\.size-[0-9.]+-years-[0-9]+")  # the Makefile's stamp of the demo it asked for: ours too
LEVELS = (250, 500, 850)
# name: (long name, units, level-dependent base value, amplitude of waves)
PRESSURE_VARS = {
    "z": ("Geopotential", "m**2 s**-2", {250: 102000.0, 500: 55000.0, 850: 14000.0}, 900.0),
    "t": ("Temperature", "K", {250: 222.0, 500: 252.0, 850: 275.0}, 4.0),
    "u": ("U component of wind", "m s**-1", {250: 20.0, 500: 12.0, 850: 6.0}, 8.0),
    "v": ("V component of wind", "m s**-1", {250: 0.0, 500: 0.0, 850: 0.0}, 6.0),
    # multiplicative (base x exp(amplitude x waves)): humidity stays positive and spans decades in height
    "q": ("Specific humidity", "kg kg**-1", {250: 4e-5, 500: 7e-4, 850: 2.8e-3}, 0.2),  # ~55% RH on average
}
SURFACE_VARS = {
    "t2m": ("2 metre temperature", "K", 285.0, 3.0),
    "msl": ("Mean sea level pressure", "Pa", 101325.0, 900.0),
}


def demo_grid(size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre latitudes (north to south, like ERA5) and longitudes 0..360 for SIZE."""
    nlat = max(4, int(round(32 * np.sqrt(size) / 2)) * 2)
    lat = 90 - (np.arange(nlat) + 0.5) * 180 / nlat
    lon = np.arange(2 * nlat) * 360 / (2 * nlat)
    return lat, lon


def write_demo(
    out: str | Path, size: float = 1.0, years: tuple[int, ...] = tuple(range(2000, 2005)), seed: int = 0
) -> Path:
    """Write the demo raw files into `out`, replacing only earlier demo data there; the stamp `.complete` is
    written last."""
    out = Path(out)
    if os.path.lexists(out) and not (_is_demo(out) or is_empty_folder(out)):
        raise StoreError(
            f"{out} exists and is not canonstore's demo data (a {STAMP} stamp and .nc files only); "
            "canonstore replaces only what it made: choose another folder"
        )
    tmp = make_staging(out.with_name(out.name + ".partial"), "demo data")
    lat, lon = demo_grid(size)
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=(len(PRESSURE_VARS) * len(LEVELS) + len(SURFACE_VARS), 3))
    _write_static(tmp, lat, lon, rng)
    for year in years:
        time = pd.date_range(f"{year}-01-01", f"{year}-12-31 18:00", freq="6h")
        hours = ((time - pd.Timestamp("2000-01-01")) / pd.Timedelta("1h")).to_numpy()
        k = 0
        for name, (long_name, units, base, amp) in PRESSURE_VARS.items():
            levels = []
            for level in LEVELS:
                if name == "q":
                    levels.append(base[level] * np.exp(amp * _field(hours, lat, lon, 0.0, 1.0, phases[k], rng, 0.0)))
                else:
                    levels.append(
                        _field(
                            hours,
                            lat,
                            lon,
                            base[level],
                            amp * {250: 1.4, 500: 1.2, 850: 0.8}[level],
                            phases[k],
                            rng,
                            diurnal=0.0,
                        )
                    )
                k += 1
            values = np.stack(levels, axis=1)  # time, level, lat, lon
            _write_var(tmp / f"{name}_{year}.nc", name, long_name, units, values, time, lat, lon, levels=LEVELS)
        for name, (long_name, units, base, amp) in SURFACE_VARS.items():
            values = _field(hours, lat, lon, base, amp, phases[k], rng, diurnal=1.0 if name == "t2m" else 0.0)
            k += 1
            _write_var(tmp / f"{name}_{year}.nc", name, long_name, units, values, time, lat, lon, packed=name == "msl")
    (tmp / STAMP).write_text(f"size={size} years={list(years)} seed={seed}\n")
    replace_folder(tmp, out, "demo data")
    return out


def _is_demo(folder: Path) -> bool:
    """Demo data this function wrote: its stamp and .nc files (and the marker a replacement adds, the Makefile's
    stamp) only."""
    if folder.is_symlink() or not (folder / STAMP).is_file():
        return False
    with os.scandir(folder) as entries:
        return all(
            e.is_file(follow_symlinks=False)
            and (e.name.endswith(".nc") or e.name in (STAMP, MARKER) or MAKE_STAMP.fullmatch(e.name))
            for e in entries
        )


def _field(hours, lat, lon, base, amp, phase, rng, diurnal):
    """Waves of zonal wavenumber 2-4 drifting east at different speeds, plus cycles and noise."""
    t = hours[:, None, None]
    la = np.deg2rad(lat)[None, :, None]
    lo = np.deg2rad(lon)[None, None, :]
    envelope = np.cos(la) ** 2
    waves = sum(
        np.cos(k * lo - 2 * np.pi * t / period + p) / k
        for k, period, p in zip((2, 3, 4), (24 * 9, 24 * 6, 24 * 4), phase)
    )
    season = np.cos(2 * np.pi * t / (24 * 365.25)) * np.sin(la)
    day = diurnal * np.cos(lo + 2 * np.pi * t / 24) * np.cos(la)
    noise = 0.05 * rng.standard_normal((hours.size, lat.size, lon.size))
    return base + amp * (envelope * waves + 0.8 * season + 0.5 * day + noise)


def _write_var(path, name, long_name, units, values, time, lat, lon, levels=None, packed=False):
    dims = ("time", "level", "latitude", "longitude") if levels is not None else ("time", "latitude", "longitude")
    coords = {
        "time": time,
        "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    if levels is not None:
        coords["level"] = (
            "level",
            np.array(levels, dtype=np.int32),
            {"units": "millibars", "long_name": "pressure_level"},
        )
    ds = xr.Dataset({name: (dims, values.astype(np.float32), {"long_name": long_name, "units": units})}, coords=coords)
    encoding = {"time": {"units": "hours since 1900-01-01 00:00:00.0", "calendar": "gregorian", "dtype": "int32"}}
    if packed:
        lo, hi = float(values.min()), float(values.max())
        scale = (hi - lo) / (2**16 - 4)
        encoding[name] = {"dtype": "int16", "scale_factor": scale, "add_offset": (hi + lo) / 2, "_FillValue": -32767}
    ds.to_netcdf(path, encoding=encoding, format="NETCDF4")


def _write_static(tmp, lat, lon, rng):
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    relief = np.sin(2 * lo + 0.5) * np.cos(3 * la) + 0.5 * np.cos(5 * lo) * np.sin(2 * la)
    lsm = (relief > 0.3).astype(np.float32)
    orography = (np.clip(relief - 0.3, 0, None) * 30000).astype(np.float32)  # geopotential at surface
    coords = {
        "latitude": ("latitude", lat, {"units": "degrees_north"}),
        "longitude": ("longitude", lon, {"units": "degrees_east"}),
    }
    xr.Dataset(
        {
            "lsm": (("latitude", "longitude"), lsm, {"long_name": "Land-sea mask", "units": "(0 - 1)"}),
            "orography": (
                ("latitude", "longitude"),
                orography,
                {"long_name": "Geopotential at surface", "units": "m**2 s**-2"},
            ),
        },
        coords=coords,
    ).to_netcdf(tmp / "static.nc", format="NETCDF4")
