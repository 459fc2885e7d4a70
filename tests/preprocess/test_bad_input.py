"""Bad input, case by case, through the CLI: exit 1, one `error:` line naming the file, variable
(and time step where there is one), no traceback, and nothing at the store's final path.

Run with `pytest tests/test_bad_input.py -s` to see every message a user gets.
"""

import errno
import os

import numpy as np
import pytest
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.formats.zarr_ import ShardWriter, shard_file
from tests.helpers import days, nc, write_recipe

SPLITS = {"train": [2000, 2000], "test": [2001, 2001]}


def two_years(raw, **second):
    """a.nc = 2000, b.nc = 2001 (changed by `second`), daily, variable x on a 2x3 grid."""
    nc(raw / "a.nc", days("2000-01-01", 366))
    return nc(raw / "b.nc", second.pop("times", days("2001-01-01", 365)), **second)


def values(n, fill=None, at=None, scale=1.0):
    v = np.random.default_rng(n).normal(size=(n, 2, 3)) * scale
    if at is not None:
        v[at] = fill
    return v


def truncated(raw):
    path = two_years(raw)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])


def truncated_netcdf3(raw):
    path = two_years(raw)
    import xarray as xr

    with xr.open_dataset(path) as ds:
        ds.load().to_netcdf(raw / "b3.nc", format="NETCDF3_64BIT")
    path.unlink()
    cut = raw / "b3.nc"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 8 // 10])


def garbage_header(raw):
    path = two_years(raw)
    path.write_bytes(b"GARBAGE!" * 2 + path.read_bytes()[16:])


def not_netcdf(raw):
    nc(raw / "a.nc", days("2000-01-01", 366))
    (raw / "b.nc").write_text("time,x\n2001-01-01,3.2\n")


def unsorted(raw):
    t = days("2001-01-01", 365)
    two_years(raw, times=t[[0, 2, 1] + list(range(3, 365))])


def duplicated_inside(raw):
    t = days("2001-01-01", 365)
    two_years(raw, times=t[[0, 1, 1] + list(range(3, 365))])


def nan_in_test_year(raw):
    two_years(raw, values=values(365, np.nan, (40, 1, 2)))


def all_nan_train(raw):
    nc(raw / "a.nc", days("2000-01-01", 366), values=np.full((366, 2, 3), np.nan))
    nc(raw / "b.nc", days("2001-01-01", 365))


def constant_train(raw):
    nc(raw / "a.nc", days("2000-01-01", 366), values=np.full((366, 2, 3), 3.0))
    nc(raw / "b.nc", days("2001-01-01", 365))


def inf_in_train_year(raw):
    nc(raw / "a.nc", days("2000-01-01", 366), values=values(366, np.inf, (40, 1, 2)))
    nc(raw / "b.nc", days("2001-01-01", 365))


def minus_inf_in_test_year(raw):
    two_years(raw, values=values(365, -np.inf, (10, 0, 0)))


def squares_overflow(raw):
    """float64 values whose squares overflow: finite data, non-finite sum of squares."""
    import xarray as xr

    nc(raw / "b.nc", days("2001-01-01", 365))
    big = values(366, scale=1e160)
    xr.Dataset(
        {"x": (("time", "lat", "lon"), big, {"units": "K"})},
        coords={"time": days("2000-01-01", 366), "lat": [0.0, 1.0], "lon": [0.0, 1.0, 2.0]},
    ).to_netcdf(raw / "a.nc")


def channel_names_clash(raw):
    """a surface variable 'z500' next to z at 500 hPa: two channels would be called z500."""
    import xarray as xr

    t = days("2000-01-01", 731)
    rng = np.random.default_rng(0)
    xr.Dataset(
        {
            "z": (("time", "level", "lat", "lon"), rng.normal(size=(731, 1, 2, 3)), {"units": "m"}),
            "z500": (("time", "lat", "lon"), rng.normal(size=(731, 2, 3)), {"units": "m"}),
        },
        coords={"time": t, "level": ("level", [500.0], {"units": "hPa"}), "lat": [0.0, 1.0], "lon": [0.0, 1.0, 2.0]},
    ).to_netcdf(raw / "a.nc")


def float16_overflow(raw):
    two_years(raw, values=values(365, 1e6, (100, 0, 0)))


def not_a_store(raw, out):
    two_years(raw)
    out.mkdir()
    (out / "notes.txt").write_text("mine")


# case: (make files, extra recipe keys, substrings the one-line error must contain)
CASES = {
    "truncated NetCDF": (truncated, {}, ["b.nc"]),
    "truncated NetCDF3 (read as zeros otherwise)": (truncated_netcdf3, {}, ["b3.nc", "truncated NetCDF3 file"]),
    "garbage header": (garbage_header, {}, ["b.nc", "cannot open as NetCDF"]),
    "not NetCDF at all": (not_netcdf, {}, ["b.nc", "cannot open as NetCDF"]),
    "missing variable": (two_years, {"variables": ["x", "tas"]}, ["variable 'tas'", "a.nc", "b.nc"]),
    "grid of another shape": (lambda r: two_years(r, lat=(0.0, 1.0, 2.0)), {}, ["b.nc", "variable 'x'", "is on grid"]),
    "grid of other values": (
        lambda r: two_years(r, lat=(0.0, 1.5)),
        {},
        ["b.nc", "variable 'x'", "'lat' differs", "1.5 vs 1.0"],
    ),
    "lat descending in one file": (
        lambda r: two_years(r, lat=(1.0, 0.0)),
        {},
        ["b.nc", "variable 'x'", "'lat' is descending", "a.nc"],
    ),
    "lon 0..360 vs -180..180": (
        lambda r: nc(r / "a.nc", days("2000-01-01", 366), lon=(0.0, 120.0, 240.0)) and two_years_lon(r),
        {},
        ["b.nc", "'lon' runs -120..120", "0..240"],
    ),
    "unsorted time": (unsorted, {}, ["b.nc", "variable 'x'", "not sorted", "steps 1 and 2"]),
    "duplicated time in a file": (duplicated_inside, {}, ["b.nc", "variable 'x'", "duplicated", "steps 1 and 2"]),
    "duplicated time across files": (
        lambda r: two_years(r, times=days("2000-12-31", 366)),
        {},
        ["time 2000-12-31", "a.nc", "b.nc", "keep_first"],
    ),
    "gap in time": (
        lambda r: two_years(r, times=days("2001-02-01", 334)),
        {},
        ["gap", "2000-12-31T00:00", "2001-02-01T00:00", "a.nc and", "b.nc", "time_gaps: allow"],
    ),
    "mixed calendars": (
        lambda r: (
            nc(r / "a.nc", days("2000-01-01", 366), calendar="standard")
            and nc(r / "b.nc", days("2001-01-01", 365), calendar="julian")
        ),
        {},
        ["mix calendars", "a.nc: standard", "b.nc: julian"],
    ),
    "mixed units": (lambda r: two_years(r, units="degC"), {}, ["variable 'x'", "degC", "K"]),
    "NaN with nan_policy error": (nan_in_test_year, {}, ["b.nc", "variable 'x'", "1 NaN", "2001-02-10"]),
    "all-NaN train channel": (all_nan_train, {"nan_policy": "fill"}, ["a.nc", "variable 'x'", "no valid value"]),
    "constant train channel": (constant_train, {}, ["a.nc", "variable 'x'", "is constant", "std 0"]),
    "float16 overflow": (
        float16_overflow,
        {"storage": {"dtype": "float16"}},
        ["b.nc", "variable 'x'", "2001-04-11", "overflows float16"],
    ),
    "bfloat16 asked for": (two_years, {"storage": {"dtype": "bfloat16"}}, ["storage.dtype", "bfloat16"]),
    "split with no steps": (
        two_years,
        {"splits": {"train": [2000, 2000], "val": [2005, 2005]}},
        ["splits.val [2005, 2005] selects no time step", "time axis 2000-01-01", "2001-12-31", "'x' from a.nc, b.nc"],
    ),
    "+inf in the train year": (
        inf_in_train_year,
        {},
        ["a.nc", "variable 'x' (channel x)", "2000-02-10", "inf", "infinite"],
    ),
    "-inf in the test year": (
        minus_inf_in_test_year,
        {"nan_policy": "fill"},
        ["b.nc", "variable 'x' (channel x)", "2001-01-11", "-inf"],
    ),
    "squares overflow float64": (
        squares_overflow,
        {},
        ["a.nc", "variable 'x' (channel x)", "sum_sq=inf", "not finite"],
    ),
    "two channels of one name": (channel_names_clash, {}, ["same name", "z500 = 'z' at 500 hPa", "z500 = 'z500'"]),
    "embargo larger than a split": (
        two_years,
        {"splits": {"train": [2000, 2000], "test": [2001, 2001], "embargo": 400}},
        ["splits.test", "embargo of 400"],
    ),
    "unknown recipe key": (two_years, {"normalise": True}, ["unknown key(s) ['normalise']"]),
    "wrong type in recipe": (two_years, {"storage": {"shard_mb": "big"}}, ["storage.shard_mb"]),
}


def two_years_lon(raw):
    return nc(raw / "b.nc", days("2001-01-01", 365), lon=(-120.0, 0.0, 120.0))


def _build(tmp_path, make, keys, out=None):
    raw = tmp_path / "raw"
    raw.mkdir()
    out = out or tmp_path / "store.zarr"
    make(raw, out) if make is not_a_store else make(raw)
    recipe = write_recipe(tmp_path, name="bad", sources=["raw/*.nc"], **{"splits": SPLITS, **keys})
    return CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"]), out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_line_and_leaves_nothing(tmp_path, case):
    make, keys, expected = CASES[case]
    result, out = _build(tmp_path, make, keys)
    print(f"\n[{case}] {result.output.strip()}")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_output_that_is_not_a_store_is_left_alone(tmp_path):
    out = tmp_path / "mine"
    result, _ = _build(tmp_path, not_a_store, {}, out)
    print(f"\n[output is not a store] {result.output.strip()}")
    assert result.exit_code == 1 and "exists and is not a canonstore store" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_full_disk_names_the_file_and_steps_and_leaves_nothing(tmp_path, monkeypatch):
    def full(self, start, block, channel=0):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(shard_file(self.store, len(self.shape), 0)))

    monkeypatch.setattr(ShardWriter, "write", full)
    result, out = _build(tmp_path, two_years, {})
    print(f"\n[disk full] {result.output.strip()}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot write steps 0.." in result.output and "data/c/0/0/0" in result.output
    assert "No space left on device" in result.output
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_read_only_output_is_one_clear_line(tmp_path, monkeypatch):
    real_mkdir = type(tmp_path).mkdir

    def read_only(self, *args, **kwargs):
        if "readonly" in str(self):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "mkdir", read_only)
    result, out = _build(tmp_path, two_years, {}, tmp_path / "readonly" / "store.zarr")
    print(f"\n[read-only output] {result.output.strip()}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "readonly" in result.output and "Read-only file system" in result.output
    assert not out.exists()
