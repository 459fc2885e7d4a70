"""`canonstore plot`: PNGs of a store and of a forecast file, read back (size, not blank)."""

import pytest
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.training import load_config, train
from canonstore.training.forecasts import write_forecast
from tests.helpers import quiet

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
    run = train(config, tiny_store, tmp_path / "runs", progress=False, log=quiet)
    path = write_forecast(run, "test", out_dir=tmp_path / "forecasts", log=quiet)
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
    store = open_store(build(tmp_path / "hadgem.yaml", tmp_path / "h.zarr", progress=False, log=quiet).path)
    labels = [str(t) for t in store.time]  # cftime: '2010-03-16 00:00:00'
    assert _step(store, "2010-03-16T00") == labels.index("2010-03-16 00:00:00")
    assert _step(store, "2010") == labels.index("2010-01-16 00:00:00")  # a year, not step 2010
    assert _step(store, "7") == 7
