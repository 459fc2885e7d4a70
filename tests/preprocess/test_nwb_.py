"""NWB sources: small recordings made with pynwb itself, several files as several sessions."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from canonstore import open_loader, open_store
from canonstore.errors import SourceError
from canonstore.preprocess import build, load_recipe, open_sources
from tests.helpers import CHANNELS, RATE, write_nwb, write_recipe

pynwb = pytest.importorskip("pynwb")


def day(d):
    return dt.datetime(2024, 3, d, 9, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def sessions(tmp_path):
    """Three sessions on three days: rate-based, rate-based with channel_conversion, explicit timestamps."""
    rng = np.random.default_rng(0)
    raw = [rng.integers(-2000, 2000, size=(n, CHANNELS), dtype=np.int16) for n in (300, 200, 250)]
    folder = tmp_path / "nwb"
    folder.mkdir()
    write_nwb(folder / "a.nwb", "s1", day(1), raw[0], offset=0.001)
    write_nwb(folder / "b.nwb", "s2", day(2), raw[1], channel_conversion=[1.0, 0.5, 2.0, 1.0])
    stamps = 1.0 + np.arange(250) / RATE + rng.uniform(0, 1e-4, 250)  # jittered clock
    write_nwb(folder / "c.nwb", "s3", day(3), raw[2], timestamps=stamps)
    return folder, raw, stamps


def recipe(tmp_path, folder, **keys):
    keys = {
        "name": "ephys",
        "sources": [str(folder / "*.nwb")],
        "series": "acquisition/ElectricalSeries",
        "splits": {"by": "sessions", "train": ["s1", "s3"], "test": ["s2"]},
        **keys,
    }
    return write_recipe(tmp_path, **keys)


def test_values_are_physical_and_times_absolute_per_session(tmp_path, sessions):
    folder, raw, stamps = sessions
    src = open_sources(load_recipe(recipe(tmp_path, folder)))
    try:
        assert [c.name for c in src.channels] == ["ch0", "ch1", "ch2", "ch3"]
        assert src.channels[0].units == "volts"
        assert src.sessions == ["s1", "s2", "s3"]
        np.testing.assert_array_equal(src.session, np.repeat([0, 1, 2], [300, 200, 250]))
        values = src.read(0, 750)
        # data x conversion (x channel_conversion) + offset
        np.testing.assert_allclose(values[:300], raw[0] * 2e-6 + 0.001, rtol=1e-12)
        np.testing.assert_allclose(values[300:500], raw[1] * 2e-6 * np.array([1.0, 0.5, 2.0, 1.0]), rtol=1e-12)
        start3 = np.datetime64("2024-03-03T09:00", "ns")
        expected = start3 + np.round(stamps * 1e9).astype("timedelta64[ns]")
        np.testing.assert_array_equal(src.time[500:], expected)
        assert src.time[1] - src.time[0] == np.timedelta64(10, "ms")  # 1 / rate
        assert src.gaps == [299, 499]  # sessions end runs of steps: no window spans two sessions
    finally:
        src.close()


def test_an_nwb_store_keeps_sessions_and_trains_through_the_same_loaders(tmp_path, sessions):
    torch = pytest.importorskip("torch")
    folder, raw, _ = sessions
    out = tmp_path / "ephys.zarr"
    build(recipe(tmp_path, folder), out, progress=False)
    store = open_store(out)
    assert store.sessions == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(store.session, np.repeat([0, 1, 2], [300, 200, 250]))
    assert (store.split_indices("test") == np.arange(300, 500)).all()
    train = np.concatenate([raw[0] * 2e-6 + 0.001, raw[2] * 2e-6])
    np.testing.assert_allclose(store.stats["mean"], train.mean(axis=0), rtol=1e-9)
    from canonstore.formats import verify_store
    from canonstore.formats.summary import describe

    assert verify_store(out) == [] and "sessions 3: s1, s2, s3" in describe(store)
    x, y = next(iter(open_loader(store, "train", batch_size=8, lead=1, device="cpu")))[:2]
    assert x.shape == (8, CHANNELS) and y.shape == (8, CHANNELS) and x.dtype == torch.float32


def test_reading_slices_the_hdf5_dataset_never_loads_it_whole(tmp_path, sessions, monkeypatch):
    from canonstore.preprocess import nwb_

    folder, raw, _ = sessions
    asked = []
    real = nwb_._PhysicalValues._read
    monkeypatch.setattr(nwb_._PhysicalValues, "_read", lambda self, key: asked.append(key) or real(self, key))
    src = open_sources(load_recipe(recipe(tmp_path, folder)))
    try:
        values = src.read(10, 20, channels=[1, 2])
    finally:
        src.close()
    assert asked == [(slice(10, 20, 1), slice(1, 3, 1))]
    np.testing.assert_allclose(values, raw[0][10:20, 1:3] * 2e-6 + 0.001)


def test_a_series_in_a_processing_module_is_found_by_its_path(tmp_path):
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import LFP, ElectricalSeries

    nwb = NWBFile(session_description="lfp", identifier="lfp-1", session_start_time=day(1))
    group = nwb.create_electrode_group(
        "shank0", description="shank", location="CA1", device=nwb.create_device(name="probe")
    )
    for _ in range(3):
        nwb.add_electrode(group=group, location="CA1")
    region = nwb.create_electrode_table_region([0, 1, 2], "all")
    lfp = np.arange(30, dtype=np.float32).reshape(10, 3)
    module = nwb.create_processing_module(name="ecephys", description="lfp")
    module.add(LFP(electrical_series=ElectricalSeries(name="ElectricalSeries", data=lfp, electrodes=region, rate=1.0)))
    with NWBHDF5IO(str(tmp_path / "lfp.nwb"), "w") as io:
        io.write(nwb)
    keys = {"name": "lfp", "sources": [str(tmp_path / "lfp.nwb")], "splits": {"by": "index", "train": [0, 9]}}
    with pytest.raises(SourceError, match="found processing/ecephys/LFP/ElectricalSeries"):
        open_sources(load_recipe(write_recipe(tmp_path, **keys)))  # nothing in acquisition: name it
    src = open_sources(load_recipe(write_recipe(tmp_path, series="processing/ecephys/LFP/ElectricalSeries", **keys)))
    try:
        assert [c.name for c in src.channels] == ["electrode0", "electrode1", "electrode2"]
        assert src.sessions == ["lfp"] and src.float32_exact.tolist() == [True] * 3  # float32, no conversion
        np.testing.assert_array_equal(src.read(0, 10), lfp)
    finally:
        src.close()


def test_a_second_zarr_implementation_reads_the_sessions(tmp_path, sessions):
    """FORMAT.md's `session`: int32 positions per step, ids in the array's own JSON attributes."""
    import json

    ts = pytest.importorskip("tensorstore")
    out = tmp_path / "ephys.zarr"
    build(recipe(tmp_path, sessions[0]), out, progress=False)
    codes = (
        ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / "session")}}, read=True)
        .result()
        .read()
        .result()
    )
    ids = json.loads((out / "session" / "zarr.json").read_text())["attributes"]["session_ids"]
    assert [ids[c] for c in codes[[0, 299, 300, 749]]] == ["s1", "s1", "s2", "s3"]
    data = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / "data")}}, read=True).result()
    assert tuple(data.shape) == (750, CHANNELS)


@pytest.mark.parametrize("case", ["missing series", "ragged timestamps", "unsorted timestamps", "channel counts"])
def test_bad_nwb_input_gets_one_clear_line(tmp_path, sessions, case):
    folder, raw, stamps = sessions
    if case == "ragged timestamps":  # pynwb refuses to write it, so the file is cut after writing
        import h5py

        with h5py.File(folder / "c.nwb", "a") as f:
            old = f["acquisition/ElectricalSeries/timestamps"]
            attrs = dict(old.attrs)
            del f["acquisition/ElectricalSeries/timestamps"]
            f.create_dataset("acquisition/ElectricalSeries/timestamps", data=stamps[:-5]).attrs.update(attrs)
    elif case == "unsorted timestamps":
        bad = stamps.copy()
        bad[[10, 11]] = bad[[11, 10]]
        write_nwb(folder / "c.nwb", "s3", day(3), raw[2], timestamps=bad)
    elif case == "channel counts":
        write_nwb(folder / "c.nwb", "s3", day(3), raw[2][:, :3])
    series = "acquisition/LFP" if case == "missing series" else "acquisition/ElectricalSeries"
    with pytest.raises(SourceError) as err:
        open_sources(load_recipe(recipe(tmp_path, folder, series=series)))
    message = str(err.value)
    assert "\n" not in message
    expected = {
        "missing series": ["a.nwb", "no series 'acquisition/LFP'", "acquisition/ElectricalSeries"],
        "ragged timestamps": ["c.nwb", "245 timestamps for 250 rows"],
        "unsorted timestamps": ["c.nwb", "not sorted at steps 10 and 11"],
        "channel counts": ["c.nwb", "3 channels", "4"],
    }[case]
    for part in expected:
        assert part in message, (part, message)


def write_plain_series(path, session_id, start, data, *, rate=None, timestamps=None, conversion=1.0, offset=0.0):
    """An NWB file with a plain TimeSeries (not an ElectricalSeries): no electrodes, no channel_conversion."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(
        session_description="behaviour", identifier=f"id-{session_id}", session_id=session_id, session_start_time=start
    )
    timing = {"timestamps": timestamps} if timestamps is not None else {"rate": rate, "starting_time": 0.0}
    nwb.add_acquisition(
        TimeSeries(name="position", data=data, unit="m", conversion=conversion, offset=offset, **timing)
    )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def test_plain_timeseries_files_build_with_physical_values(tmp_path):
    """A TimeSeries has no channel_conversion (an ElectricalSeries field): values are data x conversion + offset."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "behaviour"
    folder.mkdir()
    raw = [rng.integers(0, 1000, size=(40, 2), dtype=np.int16), rng.integers(0, 1000, size=(30, 2), dtype=np.int16)]
    write_plain_series(folder / "a.nwb", "s1", day(1), raw[0], rate=20.0, conversion=1e-3, offset=0.5)
    write_plain_series(folder / "b.nwb", "s2", day(2), raw[1], timestamps=np.arange(30) / 20.0, conversion=1e-3)
    keys = {
        "name": "behaviour",
        "sources": [str(folder / "*.nwb")],
        "series": "acquisition/position",
        "splits": {"by": "sessions", "train": ["s1"], "test": ["s2"]},
    }
    out = tmp_path / "behaviour.zarr"
    build(write_recipe(tmp_path, **keys), out, progress=False)
    store = open_store(out)
    assert store.channels == ["position_0", "position_1"] and store.sessions == ["s1", "s2"]
    assert list(store.to_xarray()["channel_units"].values) == ["m", "m"]
    np.testing.assert_allclose(store.stats["mean"], (raw[0] * 1e-3 + 0.5).mean(axis=0), rtol=1e-9)
    physical = np.asarray(store.array[:], dtype=np.float64) * store.stats["std"] + store.stats["mean"]
    np.testing.assert_allclose(physical, np.concatenate([raw[0] * 1e-3 + 0.5, raw[1] * 1e-3]), rtol=1e-5, atol=1e-6)
    one = write_plain_series(tmp_path / "speed.nwb", "s3", day(3), raw[0][:, 0], rate=20.0, conversion=1e-3)
    src = open_sources(
        load_recipe(write_recipe(tmp_path, name="speed", sources=[str(one)], splits={"by": "index", "train": [0, 39]}))
    )
    try:  # the only series in acquisition, found without `series`; 1-D data is one channel
        assert [c.name for c in src.channels] == ["position"]
        np.testing.assert_allclose(src.read(0, 40)[:, 0], raw[0][:, 0] * 1e-3, rtol=1e-12)
    finally:
        src.close()
