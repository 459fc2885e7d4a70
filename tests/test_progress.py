"""Progress off a terminal (a SLURM log, a pipe): plain lines now and then, never a stream of carriage returns."""

import io

from click.testing import CliRunner

from canonstore._progress import progress
from canonstore.cli import main
from tests.helpers import demo_recipe


def test_off_a_terminal_each_refresh_is_one_plain_line(monkeypatch):
    monkeypatch.setenv("CANONSTORE_PROGRESS_SECONDS", "0")
    log = io.StringIO()
    with progress(10, "write", stream=log) as bar:
        for _ in range(10):
            bar.update(1)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) >= 2 and all(line.startswith("write:") for line in lines)
    assert "10/10" in lines[-1]
    quiet = io.StringIO()
    with progress(10, "write", enabled=False, stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_a_build_in_a_batch_job_logs_its_passes(tiny_raw, tmp_path):
    recipe = demo_recipe(tmp_path, tiny_raw)
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(tmp_path / "s.zarr")])  # not a terminal
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    done = [line for line in result.stderr.splitlines() if "100%" in line]
    assert [line.split(":")[0] for line in done] == ["statistics", "write"], result.stderr


def test_verify_and_export_report_progress_off_a_terminal(tiny_store, tmp_path):
    for args in (["verify", str(tiny_store)], ["export", str(tiny_store), "--to", "npy", str(tmp_path / "npy")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        done = [line for line in result.stderr.splitlines() if "100%" in line]
        assert len(done) == 1 and done[0].startswith(args[0]) and "\r" not in result.stderr, result.stderr
    quiet = CliRunner().invoke(main, ["verify", str(tiny_store), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
