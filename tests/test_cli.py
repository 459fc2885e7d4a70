"""The click layer: build, inspect, verify; errors are one line and a non-zero exit."""

import pytest
from click.testing import CliRunner

from canonstore.cli import main
from canonstore.formats import open_store
from tests.helpers import demo_recipe


def test_build_inspect_verify(tmp_path, tiny_raw):
    runner = CliRunner()
    recipe = demo_recipe(tmp_path, tiny_raw)
    out = tmp_path / "demo.zarr"
    result = runner.invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "steps x 17 channels" in result.output and "MB/s" in result.output
    again = runner.invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert "up to date" in again.output

    shown = runner.invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0
    layout = open_store(out).attrs["layout"]
    for expected in (
        "z500",
        "m**2 s**-2",
        "train",
        "2000-01-01",
        "excluded",
        "static  lsm, orography",
        f"{layout['shards']} shard file(s) of {layout['shard_steps']} steps",
        "recipe",
        "inputs  22 files",
        "latitude: latitude",
        "0 gap(s)",
    ):
        assert expected in shown.output, expected

    ok = runner.invoke(main, ["verify", str(out)])
    assert ok.exit_code == 0 and "OK" in ok.output
    data = out / "data" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    bad = runner.invoke(main, ["verify", str(out)])
    assert bad.exit_code == 1 and "data/c/0/0/0/0: sha256 differs" in bad.output


def test_errors_are_one_line_without_traceback(tmp_path, tiny_raw):
    recipe = demo_recipe(tmp_path, tiny_raw, variables=["geopotential"])
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(tmp_path / "x.zarr"), "--quiet"])
    assert result.exit_code == 1
    assert "error: variable 'geopotential' (recipe 'variables') is in none of the sources" in result.output
    assert "Traceback" not in result.output


def test_sources_lists_the_recipe_inputs(tmp_path, tiny_raw):
    result = CliRunner().invoke(main, ["sources", str(demo_recipe(tmp_path, tiny_raw))])
    assert result.exit_code == 0 and len(result.output.splitlines()) == 7 * 3 + 1
    assert all(line.endswith(".nc") for line in result.output.splitlines())


def test_train_and_evaluate(tmp_path, tiny_store):
    runner = CliRunner()
    args = ["--model", "persistence", "--store", str(tiny_store), "--runs", str(tmp_path / "runs")]
    trained = runner.invoke(main, ["train", *args, "--quiet"])
    assert trained.exit_code == 0, trained.output
    scored = runner.invoke(main, ["evaluate", *args, "--scores", str(tmp_path / "scores")])
    assert scored.exit_code == 0, scored.output
    (run,) = (tmp_path / "runs").iterdir()
    assert (tmp_path / "scores" / f"{run.name}.json").is_file() and "RMSE" in scored.output
    by_folder = runner.invoke(
        main, ["evaluate", "--run", str(run), "--split", "val", "--scores", str(tmp_path / "scores")]
    )
    assert by_folder.exit_code == 0 and (tmp_path / "scores" / f"{run.name}-val.json").is_file()


def test_training_errors_are_one_line(tmp_path, tiny_store):
    runner = CliRunner()
    bad = runner.invoke(main, ["train", "--store", str(tiny_store), "--set", "epochs=abc", "--runs", str(tmp_path)])
    assert bad.exit_code == 1 and "error: command line: key 'epochs': expected a whole number" in bad.output
    missing = runner.invoke(main, ["evaluate", "--store", str(tiny_store), "--runs", str(tmp_path)])
    assert missing.exit_code == 1 and "no such run" in missing.output and "Traceback" not in missing.output


def test_version_and_usage_errors_are_one_line_with_their_exit_codes():
    from canonstore import __version__

    runner = CliRunner()
    shown = runner.invoke(main, ["--version"])
    assert shown.exit_code == 0 and shown.output.strip() == f"canonstore {__version__}"
    for args in (["build", "--nope"], ["build"], ["build", "r.yaml", "--workers", "zero"], ["nope"]):
        result = runner.invoke(main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
    assert "(see: canonstore build --help)" in runner.invoke(main, ["build", "--nope"]).output
    alone = runner.invoke(main, [])
    assert alone.exit_code == 0 and "Usage: canonstore" in alone.output and "\n  build" in alone.output


def test_train_works_from_any_folder_with_the_codes_defaults(tiny_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/default.yaml here
    args = ["train", "--model", "persistence", "--store", str(tiny_store), "--runs", "runs"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    runs = [p.name.split("-")[0] for p in (tmp_path / "runs").iterdir() if (p / "config.json").exists()]
    assert runs == ["persistence"]


def test_pull_help_names_the_librarys_whole_object_default():
    """`pull --whole-mb` is passed on only when given; its help states the library's default, kept in step here."""
    from canonstore.preprocess.pull import WHOLE_MB

    shown = CliRunner().invoke(main, ["pull", "--help"])
    assert shown.exit_code == 0 and "--whole-mb" in shown.output
    assert f"default {WHOLE_MB:g}" in " ".join(shown.output.split())


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-1"])
def test_pull_refuses_a_whole_mb_that_is_no_size_in_one_line(value, tmp_path):
    """inf and nan passed click's range check and then failed deep in pull with a traceback."""
    result = CliRunner().invoke(main, ["pull", "s3://bucket/a.zarr", str(tmp_path / "a.zarr"), "--whole-mb", value])
    assert result.exit_code == 2 and "--whole-mb" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing made
