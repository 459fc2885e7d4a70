"""The contract every registered source format passes: a tiny file of it is recognised as its kind, builds,
and the store holds what the format's own reader gives (values in physical units, times, channel order);
a damaged file is one line naming it.

A new format registers itself in `preprocess/registry.py` and adds its tiny file to `TINY` below: the first
test fails until it does. Each format's own reader is the library its users would reach for: xarray for
NetCDF, ecCodes for GRIB, pynwb for NWB, zarr-python for Zarr.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from canonstore import open_store
from canonstore.errors import SourceError
from canonstore.preprocess import build, load_recipe, open_sources
from canonstore.preprocess.registry import kind_of, registered
from tests.helpers import NI, NJ, write_grib, write_nwb, write_recipe


@dataclass(frozen=True)
class TinySource:
    """A tiny file of one format, the recipe keys that read it, and what the format's own reader gives."""

    path: Path
    keys: dict
    channels: list[str]
    time: np.ndarray  # datetime64
    values: np.ndarray  # (time, channel, *space), physical units, float64
    train_steps: int = 8  # the recipe's train split: the first steps
    damage: Path | None = None  # the file a damaged source is cut in (default `path`; a Zarr store: its zarr.json)


def tiny_netcdf(folder: Path) -> TinySource:
    times = pd.date_range("2020-01-01", periods=12, freq="6h")
    rng = np.random.default_rng(0)
    path = folder / "tiny.nc"
    xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), 280 + rng.normal(size=(12, 3, 4)).astype(np.float32), {"units": "K"}),
            "msl": (("time", "lat", "lon"), 1e5 + 100 * rng.normal(size=(12, 3, 4)), {"units": "Pa"}),
        },
        coords={"time": times, "lat": [20.0, 10.0, 0.0], "lon": [0.0, 90.0, 180.0, 270.0]},
    ).to_netcdf(path)
    with xr.open_dataset(path) as own:  # xarray: what a NetCDF user reads
        values = np.stack([own[v].values.astype(np.float64) for v in ("t2m", "msl")], axis=1)
        return TinySource(path, {"variables": ["t2m", "msl"]}, ["t2m", "msl"], own.time.values, values)


def tiny_grib(folder: Path) -> TinySource:
    import eccodes

    times = pd.date_range("2020-01-01", periods=12, freq="6h")
    rng = np.random.default_rng(1)
    path = write_grib(folder / "tiny.grib", [("2t", None, t, 0, 270 + 10 * rng.random((NJ, NI))) for t in times])
    fields, valid = [], []
    with open(path, "rb") as f:  # ecCodes: the message values and their reference times
        while (message := eccodes.codes_grib_new_from_file(f)) is not None:
            shape = (eccodes.codes_get(message, "Nj"), eccodes.codes_get(message, "Ni"))
            fields.append(eccodes.codes_get_values(message).reshape(shape))
            date, time = eccodes.codes_get(message, "dataDate"), eccodes.codes_get(message, "dataTime")
            valid.append(np.datetime64(dt.datetime.strptime(f"{date}{time:04d}", "%Y%m%d%H%M"), "ns"))
            eccodes.codes_release(message)
    # float32, as cfgrib decodes (canonstore reads GRIB through it)
    values = np.stack(fields)[:, None].astype(np.float32).astype(np.float64)
    return TinySource(path, {}, ["t2m"], np.array(valid), values)


def tiny_nwb(folder: Path) -> TinySource:
    from pynwb import NWBHDF5IO

    raw = np.random.default_rng(2).integers(-2000, 2000, size=(12, 3), dtype=np.int16)
    start = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.timezone.utc)
    path = write_nwb(folder / "tiny.nwb", "s1", start, raw, rate=10.0, conversion=1e-3, offset=0.5)
    with NWBHDF5IO(str(path), "r") as io:  # pynwb: data x conversion + offset, at starting_time + i / rate
        series = io.read().acquisition["ElectricalSeries"]
        values = series.data[:].astype(np.float64) * series.conversion + series.offset
        seconds = series.starting_time + np.arange(values.shape[0]) / series.rate
    time = np.datetime64("2024-03-01T09:00", "ns") + np.round(seconds * 1e9).astype("timedelta64[ns]")
    keys = {"series": "acquisition/ElectricalSeries", "splits": {"by": "sessions", "train": ["s1"]}}
    return TinySource(path, keys, ["ch0", "ch1", "ch2"], time, values, train_steps=12)


def tiny_zarr(folder: Path) -> TinySource:
    import zarr

    times = pd.date_range("2020-01-01", periods=12, freq="6h")
    rng = np.random.default_rng(3)
    path = folder / "tiny.zarr"
    xr.Dataset(
        {"2m_temperature": (("time", "longitude", "latitude"), 280 + rng.normal(size=(12, 4, 3)), {"units": "K"})},
        coords={"time": times, "latitude": [0.0, 10.0, 20.0], "longitude": [0.0, 90.0, 180.0, 270.0]},
    ).to_zarr(path, zarr_format=3, encoding={"2m_temperature": {"chunks": (5, 4, 3)}})
    group = zarr.open_group(path, mode="r")  # zarr-python: the array as stored, (time, longitude, latitude)
    values = np.asarray(group["2m_temperature"][:], dtype=np.float64)[:, None]
    return TinySource(path, {}, ["t2m"], times.values, values, damage=path / "zarr.json")


TINY = {"netcdf": tiny_netcdf, "grib": tiny_grib, "nwb": tiny_nwb, "zarr": tiny_zarr}
NEEDS = {"grib": "cfgrib", "nwb": "pynwb"}  # the optional reader a format's test skips without


def test_every_registered_format_has_a_tiny_file_here():
    assert sorted(registered()) == sorted(TINY)


@pytest.fixture(params=sorted(TINY))
def tiny(request, tmp_path, monkeypatch) -> tuple[str, TinySource, Path]:
    kind = request.param
    if kind in NEEDS:
        pytest.importorskip(NEEDS[kind])
    monkeypatch.setenv("CANONSTORE_CACHE", str(tmp_path / "cache"))  # GRIB index files
    (tmp_path / "raw").mkdir()
    source = TINY[kind](tmp_path / "raw")
    keys = {"name": kind, "sources": [str(source.path)], "splits": {"by": "index", "train": [0, 7], "test": [8, 11]}}
    return kind, source, write_recipe(tmp_path, **{**keys, **source.keys})


class TestSourceContract:
    def test_recognised_as_its_kind(self, tiny):
        kind, source, _ = tiny
        assert kind_of(source.path) == kind

    def test_sources_read_what_the_own_reader_gives(self, tiny):
        _, source, recipe = tiny
        sources = open_sources(load_recipe(recipe))
        try:
            assert [c.name for c in sources.channels] == source.channels
            np.testing.assert_array_equal(sources.time.astype("datetime64[ns]"), source.time.astype("datetime64[ns]"))
            np.testing.assert_allclose(sources.read(0, len(source.time)), source.values, rtol=1e-12)
        finally:
            sources.close()

    def test_the_store_holds_the_own_readers_values_normalised_by_train_statistics(self, tiny, tmp_path):
        _, source, recipe = tiny
        store = open_store(build(recipe, tmp_path / "tiny.zarr", progress=False).path)
        assert store.channels == source.channels
        np.testing.assert_array_equal(store.time.astype("datetime64[ns]"), source.time.astype("datetime64[ns]"))
        axes = (0, *range(2, source.values.ndim))
        train = source.values[: source.train_steps]
        np.testing.assert_allclose(store.stats["mean"], train.mean(axis=axes), rtol=1e-9)
        physical = store.denormalise(np.asarray(store.array[:], dtype=np.float64))
        np.testing.assert_allclose(physical, source.values, rtol=1e-5, atol=1e-5 * np.abs(source.values).max())

    def test_a_damaged_file_is_one_line_naming_it(self, tiny):
        _, source, recipe = tiny
        damaged = source.damage or source.path
        data = damaged.read_bytes()
        damaged.write_bytes(data[: len(data) // 3 + 50])  # inside a GRIB message, an HDF5 structure, a JSON document
        with pytest.raises(SourceError) as err:
            open_sources(load_recipe(recipe)).close()
        assert source.path.name in str(err.value) and "\n" not in str(err.value)
