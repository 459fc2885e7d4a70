"""`canonstore demo-data OUT`: the demo raw files, written over earlier demo data only."""

from click.testing import CliRunner

from canonstore.cli import main
from canonstore.preprocess.demo import write_demo


def test_demo_data_replaces_earlier_demo_data_and_nothing_else(tmp_path):
    out = write_demo(tmp_path / "demo", size=1 / 16, years=(2000,))
    files = sorted(p.name for p in out.iterdir())
    assert ".complete" in files and "static.nc" in files
    assert sorted(p.name for p in write_demo(out, size=1 / 16, years=(2000,)).iterdir()) == files  # replaced
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "era5_2000.nc").write_text("a real download")
    result = CliRunner().invoke(main, ["demo-data", str(raw), "--years", "1"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "is not canonstore's demo data" in lines[0], result.output
    assert (raw / "era5_2000.nc").read_text() == "a real download"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "raw"]


def test_demo_data_written_by_make_can_be_written_again(tmp_path):
    """`make data` leaves its stamp (.size-S-years-Y) in the folder; when preprocess/demo.py changes, make runs
    demo-data again over that folder, which must count the stamp as its own, not as a user's file."""
    out = write_demo(tmp_path / "demo", size=1 / 16, years=(2000,))
    (out / ".size-0.0625-years-1").touch()
    result = CliRunner().invoke(main, ["demo-data", str(out), "--size", "0.0625", "--years", "1"])
    assert result.exit_code == 0, result.output
    assert (out / ".complete").is_file()
    (out / ".size-0.0625-years-1.bak").write_text("a user's file")  # not the stamp's exact pattern
    result = CliRunner().invoke(main, ["demo-data", str(out), "--size", "0.0625", "--years", "1"])
    assert result.exit_code == 1 and "is not canonstore's demo data" in result.output
