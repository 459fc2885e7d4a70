"""What the tests share: recipes, tiny source files of each format, and store copies.

Fixtures live in conftest.py; everything here is a plain function, imported as `from tests.helpers import ...`.
Optional readers (ecCodes, pynwb) are imported inside the function that needs them, so that importing this
module never fails where they are absent (their tests skip).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
ROOT = Path(__file__).resolve().parents[1]  # the repository


# Tests whose processes talk over sockets (dask workers, gloo process groups, torchrun) run once more when they
# fail: on a loaded 2-core CI box a worker restart or a gloo rendezvous occasionally times out (seen: dask's
# "Only 1/2 workers arrived after 60 s", gloo's "connectFullMesh failed ... Connection closed by peer").
PROCESS_GROUPS = pytest.mark.flaky(reruns=2, reruns_delay=2)


# --- recipes


def write_recipe(folder: Path, **keys) -> Path:
    """Write a recipe YAML into `folder`; keys are recipe keys (see README)."""
    keys.setdefault("name", "test")
    path = folder / f"{keys['name']}.yaml"
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


def demo_recipe(folder: Path, raw: Path, **overrides) -> Path:
    keys = {
        "name": "demo",
        "sources": [str(raw / "*.nc")],
        "static": ["lsm", "orography"],
        "splits": {"train": [2000, 2000], "val": [2001, 2001], "test": [2002, 2002], "embargo": 2},
        "storage": {"shard_mb": 1},
    }
    keys.update(overrides)
    return write_recipe(folder, **keys)


# --- tiny source files, one writer per format


def nc(path, times, values=None, lat=(0.0, 1.0), var="x", units="K", calendar=None, level=None, lon=(0.0, 1.0, 2.0)):
    times = pd.DatetimeIndex(times) if not isinstance(times, pd.DatetimeIndex) else times
    shape = (len(times), len(lat), len(lon)) if level is None else (len(times), len(level[1]), len(lat), len(lon))
    if values is None:
        values = np.random.default_rng(len(times)).normal(size=shape)
    dims = ("time", "lat", "lon") if level is None else ("time", level[0], "lat", "lon")
    coords = {"time": times, "lat": list(lat), "lon": list(lon)}
    if level is not None:
        coords[level[0]] = (level[0], np.array(level[1], float), {"units": level[2]})
    ds = xr.Dataset({var: (dims, values.astype(np.float32), {"units": units})}, coords=coords)
    encoding = {"time": {"units": "hours since 1990-01-01", **({"calendar": calendar} if calendar else {})}}
    ds.to_netcdf(path, encoding=encoding)
    return path


def days(start, n):
    return pd.date_range(start, periods=n, freq="D")


def t2m_file(path, times):
    values = np.random.default_rng(len(times)).normal(size=(len(times), 2, 3)).astype(np.float32)
    xr.Dataset(
        {"t2m": (("time", "lat", "lon"), values, {"units": "K"})},
        coords={"time": times, "lat": [10.0, 0.0], "lon": [0.0, 1.0, 2.0]},
    ).to_netcdf(path)
    return path


def monthly_360_day(path):
    """tas on a 2x2 grid, monthly on the 16th, 2005-01 .. 2031-12 in the 360_day calendar (HadGEM2's)."""
    times = xr.date_range("2005-01-01", periods=27 * 12, freq="MS", calendar="360_day", use_cftime=True)
    times = times + pd.Timedelta(days=15)
    values = 280 + np.random.default_rng(0).normal(size=(times.size, 2, 2))
    xr.Dataset(
        {"tas": (("time", "lat", "lon"), values, {"units": "K"})},
        coords={"time": times, "lat": [10.0, 20.0], "lon": [0.0, 5.0]},
    ).to_netcdf(path)
    return path


UNQUOTED = """name: hadgem
sources: [tas.nc]
time: {start: 2005-01-01, end: 2031-02-30}
splits: {by: dates, train: [2005-01-01, 2030-02-30], test: [2030-03-01, 2031-02-30]}
"""


UNQUOTED = """name: hadgem
sources: [tas.nc]
time: {start: 2005-01-01, end: 2031-02-30}
splits: {by: dates, train: [2005-01-01, 2030-02-30], test: [2030-03-01, 2031-02-30]}
"""  # a recipe for monthly_360_day's file, its dates unquoted (2030-02-30 is no date to YAML)


NI, NJ = 8, 5  # GRIB grid: 8 longitudes x 5 latitudes, 2.5 degrees apart


def write_grib(path, fields, edition=2):
    """fields: (shortName, level or None, reference time, forecast step in hours, (NJ, NI) values)."""
    import eccodes  # optional: the GRIB tests skip without it

    with open(path, "wb") as f:
        for short, level, when, step, values in fields:
            h = eccodes.codes_grib_new_from_samples(f"regular_ll_{'pl' if level else 'sfc'}_grib{edition}")
            for key, value in [
                ("Ni", NI),
                ("Nj", NJ),
                ("latitudeOfFirstGridPointInDegrees", 60.0),
                ("latitudeOfLastGridPointInDegrees", 60.0 - 2.5 * (NJ - 1)),
                ("longitudeOfFirstGridPointInDegrees", 0.0),
                ("longitudeOfLastGridPointInDegrees", 2.5 * (NI - 1)),
                ("iDirectionIncrementInDegrees", 2.5),
                ("jDirectionIncrementInDegrees", 2.5),
                ("shortName", short),
                ("dataDate", int(when.strftime("%Y%m%d"))),
                ("dataTime", int(when.strftime("%H%M"))),
            ]:
                eccodes.codes_set(h, key, value)
            if level:
                eccodes.codes_set(h, "level", level)
            if step:  # an accumulation from the run's start to `step` hours
                eccodes.codes_set(h, "stepType", "accum")
                eccodes.codes_set(h, "startStep", 0)
                eccodes.codes_set(h, "endStep", step)
            eccodes.codes_set_values(h, np.asarray(values, dtype=np.float64).ravel())
            eccodes.codes_write(h, f)
            eccodes.codes_release(h)
    return path


RATE = 100.0  # Hz: NWB sampling rate
CHANNELS = 4


def write_nwb(
    path,
    session_id,
    start,
    raw,
    *,
    rate=RATE,
    timestamps=None,
    conversion=2e-6,
    offset=0.0,
    channel_conversion=None,
    labels=True,
    series="ElectricalSeries",
    starting_time=0.0,
):
    """An NWB file with one ElectricalSeries of int16 `raw` (steps, CHANNELS) on CHANNELS electrodes."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    nwb = NWBFile(
        session_description="test", identifier=f"id-{session_id}", session_id=session_id, session_start_time=start
    )
    device = nwb.create_device(name="probe")
    group = nwb.create_electrode_group("shank0", description="shank", location="CA1", device=device)
    if labels:
        nwb.add_electrode_column(name="label", description="channel label")
    for i in range(raw.shape[1]):
        nwb.add_electrode(group=group, location="CA1", **({"label": f"ch{i}"} if labels else {}))
    region = nwb.create_electrode_table_region(list(range(raw.shape[1])), "all electrodes")
    timing = {"timestamps": timestamps} if timestamps is not None else {"rate": rate, "starting_time": starting_time}
    nwb.add_acquisition(
        ElectricalSeries(
            name=series,
            data=raw,
            electrodes=region,
            conversion=conversion,
            offset=offset,
            channel_conversion=channel_conversion,
            **timing,
        )
    )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def gappy_values(n: int) -> np.ndarray:
    """(n, 2 variables, 2, 3) daily values; variable 0 has NaNs at a pattern that changes in time."""
    values = np.random.default_rng(7).normal(size=(n, 2, 2, 3))
    values[::7, 0, 0, 1] = np.nan
    values[3::5, 0, 1, 2] = np.nan
    return values


# --- stores


def linked_copy(store: Path, to: Path) -> Path:
    """A copy of `store` at `to` made of hard links (cheap; never written to, see `replace_build`)."""
    shutil.copytree(store, to, copy_function=os.link)
    return to


def replace_build(path: Path) -> None:
    """Stand-in for a rebuild landing at `path` after a reader opened it: the opened directory moves away
    (a reader's handle keeps it) and another build takes the path (the same data, another manifest)."""
    old = path.with_name(f"{path.name}.replaced{len(list(path.parent.glob(path.name + '.replaced*')))}")
    path.rename(old)
    linked_copy(old, path)
    manifest = path / "manifest.json"
    text = manifest.read_text()
    manifest.unlink()  # a link to the original's: write a new file, never through the link
    manifest.write_text(text + "\n")
