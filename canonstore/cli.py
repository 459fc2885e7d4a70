"""The `canonstore` command: a thin click layer over the library (nothing else imports click)."""

from __future__ import annotations

import logging
import sys

import click

from canonstore import __version__
from canonstore._cli_options import (
    bars,
    build_options,
    config_of,
    folder_of,
    forecast_options,
    score_options,
    training_options,
)
from canonstore._logging import on_terminal
from canonstore.errors import CanonstoreError

logger = logging.getLogger(__name__)


def _run(fn, debug: bool):
    """Library errors become one clear line and exit 1; --debug shows the traceback."""
    try:
        return fn()
    except (CanonstoreError, OSError) as exc:  # OSError: e.g. a full or read-only disk, named by path
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2 raises it; older ones exit


class _OneLineErrors(click.Group):
    """click's own errors (unknown option, missing argument, bad value) as one `error:` line, exit status 2,
    like every other failure (exit status 1): README's "Command line" lists the codes."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False  # click's errors come here instead of its `Error:` block
        kwargs.setdefault("prog_name", "canonstore")  # also under `python -m canonstore` and torchrun
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except _NO_ARGS as exc:  # `canonstore` alone: its help, as click prints it
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.ClickException as exc:
            where = f" (see: {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
            click.echo(f"error: {' '.join(exc.format_message().split())}{where}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_OneLineErrors, name="canonstore")
@click.version_option(__version__, "--version", prog_name="canonstore", message="%(prog)s %(version)s")
@click.option("--verbose", "-v", is_flag=True, help="Also the debug lines (the build log gets them too).")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors; no progress bars. Log files keep all.")
@click.pass_context
def main(ctx, verbose, quiet):
    """Raw NetCDF -> one canonical, pre-normalised Zarr store with fixed splits."""
    if verbose and quiet:
        raise click.UsageError("give --verbose or --quiet, not both")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    ctx.with_resource(on_terminal(level))  # for this command only: a Python caller's logging stays its own


@main.command()
@build_options
def build(recipe, out, quiet, debug, **options):
    """Build the store described by RECIPE (in this process unless a dask cluster is named)."""
    from canonstore.preprocess import build as build_store

    _run(lambda: build_store(recipe, out, progress=bars(quiet), **options), debug)


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe to extend to (default: the store's own).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def append(store, recipe, quiet, debug):
    """Add the steps that follow STORE's last one (a later time.end, new raw files); train statistics stay."""
    from canonstore.preprocess.append import append as append_steps

    _run(lambda: append_steps(store, recipe, progress=bars(quiet)), debug)


@main.command()
@click.argument("store")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect(store, debug):
    """Summarise STORE (a folder or s3:// URL): channels, statistics, splits, layout, provenance."""
    from canonstore.formats import open_store
    from canonstore.formats.summary import describe

    click.echo(_run(lambda: describe(open_store(store)), debug))


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--inputs", is_flag=True, help="Also check that the raw inputs are unchanged since the build.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def verify(store, inputs, quiet):
    """Recompute STORE's checksums and check its schema; exit 1 on any problem."""
    from canonstore.formats.verify import verify_inputs, verify_store

    problems = verify_store(store, progress=bars(quiet)) + (verify_inputs(store) if inputs else [])
    click.echo("".join(f"error: {problem}\n" for problem in problems), err=True, nl=False)
    if problems:
        sys.exit(1)
    logger.info(f"{store}: OK (all files match the manifest, schema valid{', inputs unchanged' if inputs else ''})")


def _not_nan(value):
    if value is not None and value != value:  # FloatRange lets nan through: it compares false with both ends
        raise click.BadParameter("nan is not a number of MiB")
    return value


@main.command()
@click.argument("url")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option(
    "--whole-mb",
    type=click.FloatRange(min=0, max=2.0**40),  # up to 1 EiB
    callback=lambda ctx, param, value: _not_nan(value),
    help="Objects up to this many MiB come in one request, larger ones in ranged parts spread over the "
    "connections (default 256; above the largest shard for a server that reads a whole object per range).",
)
def pull(url, dest, whole_mb):
    """Copy the store at URL (s3://...) to DEST: parallel ranged reads, resumable, verified, published atomically."""
    from canonstore.preprocess.pull import pull as pull_store

    sizes = {} if whole_mb is None else {"whole_mb": whole_mb}
    _run(lambda: pull_store(url, dest, progress=bars(False), **sizes), False)


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--to", "kind", type=click.Choice(["npy", "netcdf"]), required=True, help="npy: as stored; netcdf: physical"
)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (the new export appears by one rename).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def export(store, kind, out, overwrite, quiet, debug):
    """Export STORE's train/val/test steps to OUT as .npy or NetCDF files, plus meta.json."""
    from canonstore.formats.netcdf_export import export_netcdf
    from canonstore.formats.npy import export_npy

    export_to = export_netcdf if kind == "netcdf" else export_npy
    _run(lambda: export_to(store, out, overwrite=overwrite, progress=bars(quiet)), debug)


@main.command("sources")
@click.argument("recipe", type=click.Path(dir_okay=False))
def sources(recipe):
    """List the input files RECIPE resolves to, one per line (used by the Makefile)."""
    from canonstore.preprocess import load_recipe

    for path in _run(lambda: load_recipe(recipe).sources, False):
        click.echo(path)


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--size", default=1.0, show_default=True, help="Scales the grid points (each axis by sqrt(SIZE)).")
@click.option("--years", default=5, show_default=True, help="Number of years, from 2000.")
def demo_data(out, size, years):
    """Write the embedded demo raw dataset (ERA5-like NetCDF) into OUT."""
    from canonstore.preprocess.demo import write_demo

    path = _run(lambda: write_demo(out, size=size, years=tuple(range(2000, 2000 + years))), False)
    logger.info(f"wrote demo raw data to {path}")


@main.command()
@training_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(config_path, model, store, overrides, runs, debug, quiet):
    """Train (or fit) a model on STORE into runs/<model>-<store>-<hash>; resumes an interrupted run."""
    from canonstore.training import train as train_run

    try:
        _run(lambda: train_run(config_of(config_path, model, overrides), store, runs, progress=bars(quiet)), debug)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run the same command again to resume from the last checkpoint", err=True)
        sys.exit(130)


@main.command()
@training_options
@click.option("--run", "folder", type=click.Path(file_okay=False), help="Score this run folder instead.")
@click.option(
    "--scores",
    default="scores",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where scores/<run-name>.json goes.",
)
@forecast_options
def evaluate(config_path, model, store, overrides, runs, debug, folder, scores, split, steps, file_format, quiet):
    """Forecast and score a run's best checkpoint on SPLIT, in physical units, into scores/<run-name>.json."""
    from canonstore.training import evaluate as evaluate_run

    _run(
        lambda: evaluate_run(
            folder_of(folder, config_path, model, overrides, store, runs),
            scores,
            split=split,
            steps=steps,
            progress=bars(quiet),
            file_format=file_format,
        ),
        debug,
    )


@main.command()
@training_options
@click.option("--run", "folder", type=click.Path(file_okay=False), help="Forecast with this run folder instead.")
@click.option(
    "--forecasts",
    default="forecasts",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where forecasts/<run-name>/<split>.zarr goes.",
)
@forecast_options
def forecast(config_path, model, store, overrides, runs, debug, folder, forecasts, split, steps, file_format, quiet):
    """Write a run's best-checkpoint predictions of SPLIT to forecasts/<run-name>/<split>.zarr (physical units)."""
    from canonstore.training.forecasts import write_forecast

    _run(
        lambda: write_forecast(
            folder_of(folder, config_path, model, overrides, store, runs),
            split,
            out_dir=forecasts,
            steps=steps,
            progress=bars(quiet),
            file_format=file_format,
        ),
        debug,
    )


@main.command()
@click.argument("forecast_file", type=click.Path(exists=True))
@click.option(
    "--store",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="The store whose steps the forecast is scored against.",
)
@click.option("--out", type=click.Path(dir_okay=False), help="Scores JSON (default scores/<forecast>.json).")
@click.option("--lat-weighted/--no-lat-weighted", default=None, help="Default: the file's own setting, else on.")
@score_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def score(forecast_file, store, out, lat_weighted, renames, acc_reference, quiet, debug):
    """Score FORECAST_FILE (WeatherBench 2's layout, or one variable per channel; Zarr or NetCDF) against STORE."""
    from canonstore.training.evaluate import score_to_file

    _run(
        lambda: score_to_file(
            forecast_file, store, out, lat_weighted, progress=bars(quiet), reference=acc_reference, rename=renames
        ),
        debug,
    )


@main.command()
@click.argument("target", type=click.Path(exists=True, file_okay=False))
@click.option("--store", type=click.Path(exists=True, file_okay=False), help="TARGET is a forecast file of STORE.")
@click.option("--channel", "channels", multiple=True, help="A channel to map (repeatable; default: the first 4).")
@click.option("--time", "when", help="The step to map: an index, or a time ('2001-03-01T06'; default: first test).")
@click.option("--out", default="plots", show_default=True, type=click.Path(file_okay=False), help="Where PNGs go.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def plot(target, store, channels, when, out, debug):
    """PNGs of a store (maps, train histograms, split timeline) or, with --store, of a forecast file's errors."""
    from canonstore.training.plots import plot_forecast, plot_store

    def go():
        written = plot_forecast(target, store, out) if store else plot_store(target, out, list(channels), when)
        for path in written:
            logger.info(f"wrote {path}")

    _run(go, debug)
