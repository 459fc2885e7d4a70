"""`canonstore plot`: PNGs of a store and of a forecast file, read back (size, not blank)."""

import numpy as np
import pytest
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.training import load_config, train
from canonstore.training.forecasts import write_forecast

plt = pytest.importorskip("matplotlib.pyplot")


def assert_a_picture(path, min_side=200):
    image = plt.imread(path)
    assert image.shape[0] >= min_side and image.shape[1] >= min_side, image.shape
    assert image[..., :3].std() > 0.05, f"{path} is blank"


def test_a_store_plots_maps_histograms_and_its_split_timeline(tiny_store, tmp_path):
    args = ["plot", str(tiny_store), "--channel", "t2m", "--channel", "z500", "--time", "2001-03-01", "--out"]
    result = CliRunner().invoke(main, [*args, str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["demo-histograms.png", "demo-maps.png", "demo-timeline.png"]
    for name in names:
        assert_a_picture(tmp_path / name)
    assert plt.imread(tmp_path / "demo-maps.png").shape[1] > plt.imread(tmp_path / "demo-maps.png").shape[0]  # 2 maps


def test_unknown_channels_and_times_are_one_line(tiny_store, tmp_path):
    for args, says in ((["--channel", "nope"], "no channel(s) ['nope']"), (["--time", "1999-01-01"], "no time")):
        result = CliRunner().invoke(main, ["plot", str(tiny_store), *args, "--out", str(tmp_path)])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and says in lines[0], result.output


def test_a_forecast_plots_error_maps_and_rmse_by_lead(tiny_store, tmp_path):
    config = load_config(None, {"model": "persistence", "lead": [1, 2], "device": "cpu"})
    run = train(config, tiny_store, tmp_path / "runs", progress=False)
    path = write_forecast(run, "test", out_dir=tmp_path / "forecasts")
    result = CliRunner().invoke(main, ["plot", str(path), "--store", str(tiny_store), "--out", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    stem = f"{path.parent.name}-{path.stem}"
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [f"{stem}-errors.png", f"{stem}-rmse-by-lead.png"]
    for p in (tmp_path / "png").iterdir():
        assert_a_picture(p)


def test_times_are_matched_by_their_labels_also_in_a_360_day_calendar(tmp_path):
    from canonstore import open_store
    from canonstore.preprocess import build
    from canonstore.training.plots import _step
    from tests.helpers import UNQUOTED, monthly_360_day

    monthly_360_day(tmp_path / "tas.nc")
    (tmp_path / "hadgem.yaml").write_text(UNQUOTED)
    store = open_store(build(tmp_path / "hadgem.yaml", tmp_path / "h.zarr", progress=False).path)
    labels = [str(t) for t in store.time]  # cftime: '2010-03-16 00:00:00'
    assert _step(store, "2010-03-16T00") == labels.index("2010-03-16 00:00:00")
    assert _step(store, "2010") == labels.index("2010-01-16 00:00:00")  # a year, not step 2010
    assert _step(store, "7") == 7


def test_error_maps_of_a_perfect_forecast_in_another_grid_order_and_units_are_zero(tiny_store, tmp_path):
    """The maps come from the file matched to the store by values: latitude ascending, longitude -180..180,
    t2m in degC and msl in hPa must still map the truth onto itself (RMSE 0), never a shifted field."""
    from canonstore import open_store
    from canonstore.training.alignment import align_forecast
    from canonstore.training.plots import rmse_maps
    from tests.training.test_forecasts import to_pm180, truth_as_forecast

    store = open_store(tiny_store)
    fc = to_pm180(truth_as_forecast(store).sortby("latitude"))
    fc["t2m"] = (fc["t2m"] - 273.15).assign_attrs(units="degC")
    fc["msl"] = (fc["msl"] / 100).assign_attrs(units="hPa")
    fc.to_zarr(tmp_path / "wb2-like.zarr")
    rmse = rmse_maps(align_forecast(tmp_path / "wb2-like.zarr", store), store)
    assert rmse.shape == (4, *store.shape[2:])
    scale = store.stats["std"][[store.channels.index(n) for n in ("z500", "t850", "t2m", "msl")]]
    assert (rmse.max(axis=(1, 2)) / scale < 1e-5).all(), rmse.max(axis=(1, 2))
    shifted = truth_as_forecast(store, lead=2).assign_coords(lead=[1])  # a wrong valid time is refused, not mapped
    shifted.to_zarr(tmp_path / "shifted.zarr")
    with pytest.raises(Exception, match="valid_time"):
        align_forecast(tmp_path / "shifted.zarr", store)


def test_a_longitude_first_grid_is_drawn_latitude_up(tmp_path):
    """A source written (time, lon, lat) builds a store in that order; its maps are transposed to draw,
    so the northern row stays north."""
    import xarray as xr

    from canonstore import open_store
    from canonstore.preprocess import build
    from canonstore.training import plots
    from tests.helpers import days, write_recipe

    lat, lon = [-30.0, 0.0, 30.0], [0.0, 90.0, 180.0, 270.0]
    north = np.broadcast_to(np.asarray(lat)[None, None, :], (20, 4, 3))  # the value is the latitude
    xr.Dataset(
        {
            "t": (
                ("time", "lon", "lat"),
                280 + north + np.random.default_rng(0).normal(0, 0.1, (20, 4, 3)),
                {"units": "K"},
            )
        },
        coords={"time": days("2000-01-01", 20), "lon": lon, "lat": lat},
    ).to_netcdf(tmp_path / "t.nc")
    recipe = write_recipe(tmp_path, sources=["t.nc"], splits={"by": "index", "train": [0, 14], "test": [15, 19]})
    store = open_store(build(recipe, tmp_path / "t.zarr", progress=False).path)
    assert store.dims[2:] == ("lon", "lat")
    grid = plots._grid(store)
    assert grid[2] is True  # drawn transposed

    class Axes:
        def pcolormesh(self, x, y, field, **_):
            self.drawn = (x, y, field)
            return None

        def set(self, **_):
            pass

    class Figure:
        def colorbar(self, *_, **__):
            pass

    ax = Axes()
    field = store.denormalise(np.asarray(store.array[0:1], dtype=np.float64))[0, 0]  # (lon, lat)
    plots._map(ax, Figure(), grid, field, "t")
    x, y, drawn = ax.drawn
    assert drawn.shape == (len(y), len(x)) == (3, 4)  # rows are latitudes, as pcolormesh needs
    np.testing.assert_allclose(drawn.mean(axis=1) - 280, y, atol=0.1)  # each row holds its own latitude's value
