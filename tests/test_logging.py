"""canonstore/_logging.py: the library says things through `logging`, shows nothing unless asked, and log files
keep its INFO lines whatever the terminal or the calling program shows."""

import logging
import re
import subprocess
import sys

from click.testing import CliRunner

from canonstore._logging import copied_to, on_terminal
from canonstore.cli import main
from tests.helpers import demo_recipe

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (\S+) ([A-Z]+): (.*)")  # a log file's line


def test_the_library_called_from_python_without_logging_configured_prints_nothing(tiny_raw, tmp_path):
    recipe = demo_recipe(tmp_path, tiny_raw)
    script = (
        "from canonstore.preprocess import build\n"
        f"build({str(recipe)!r}, {str(tmp_path / 'demo.zarr')!r}, progress=False)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    logged = [LINE.fullmatch(line) for line in (tmp_path / "demo.zarr.log").read_text().splitlines()[1:]]
    assert all(logged) and any(m[2] == "INFO" and m[3].startswith("wrote ") for m in logged)


def test_a_log_file_gets_info_lines_that_the_program_does_not_show(capsys):
    said = logging.getLogger("canonstore.example")
    lines = []
    with copied_to(lines.append):
        said.debug("detail")
        said.info("wrote x")
        said.warning("look at y")
    assert [LINE.fullmatch(line).groups() for line in lines] == [
        ("canonstore.example", "INFO", "wrote x"),
        ("canonstore.example", "WARNING", "look at y"),
    ]
    out, err = capsys.readouterr()
    assert "wrote x" not in out + err and "detail" not in out + err  # nobody asked to see them
    root = logging.getLogger("canonstore")
    assert root.level == logging.NOTSET and root.propagate and root.handlers == []  # as it was


def test_warnings_still_reach_the_programs_own_handlers_while_a_file_copies_everything(caplog):
    lines = []
    with copied_to(lines.append):
        logging.getLogger("canonstore.example").info("wrote x")
        logging.getLogger("canonstore.example").warning("look at y")
    assert [r.getMessage() for r in caplog.records] == ["look at y"]  # the root's level: WARNING
    assert len(lines) == 2


def test_the_terminal_shows_info_bare_and_other_levels_named(capsys):
    said = logging.getLogger("canonstore.example")
    with on_terminal(logging.DEBUG):
        said.debug("detail")
        said.info("wrote x")
        said.warning("look at y")
    said.info("after the command")
    assert capsys.readouterr().out == "debug: detail\nwrote x\nwarning: look at y\n"
    assert logging.getLogger("canonstore").handlers == []


def test_quiet_commands_print_only_errors_and_verbose_ones_debug_lines(tiny_raw, tmp_path):
    recipe, out = demo_recipe(tmp_path, tiny_raw), tmp_path / "demo.zarr"
    runner = CliRunner()
    quiet = runner.invoke(main, ["-q", "build", str(recipe), "--out", str(out)])
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output  # no lines, no progress either
    log = (tmp_path / "demo.zarr.log").read_text()
    assert re.search(r"Z canonstore\.preprocess\.build INFO: wrote .*demo\.zarr: \d+ steps", log), log
    verbose = runner.invoke(main, ["--verbose", "build", str(recipe), "--out", str(out), "--force", "--quiet"])
    assert verbose.exit_code == 0 and "debug: " in verbose.stdout and "wrote " in verbose.stdout, verbose.output
    assert re.search(r"Z canonstore\.preprocess\.build DEBUG: .*input files", (tmp_path / "demo.zarr.log").read_text())
    plain = runner.invoke(main, ["verify", str(out), "--quiet"])
    assert plain.stdout.startswith(f"{out}: OK") and "debug: " not in plain.stdout
    assert runner.invoke(main, ["-q", "verify", str(out)]).output == ""
    failed = runner.invoke(main, ["-q", "build", str(tmp_path / "nope.yaml")])
    assert failed.exit_code == 1 and failed.output.startswith("error: ") and len(failed.output.splitlines()) == 1
    both = runner.invoke(main, ["-q", "-v", "verify", str(out)])
    assert both.exit_code == 2 and both.output.startswith("error: give --verbose or --quiet")
