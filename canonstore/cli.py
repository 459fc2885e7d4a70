"""The `canonstore` command: a thin click layer over the library (nothing else imports click)."""

from __future__ import annotations

import sys

import click

from canonstore.errors import CanonstoreError


def _run(fn, debug: bool):
    """Library errors become one clear line and exit 1; --debug shows the traceback."""
    try:
        return fn()
    except (CanonstoreError, OSError) as exc:  # OSError: e.g. a full or read-only disk, named by path
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@click.group()
def main():
    """Raw NetCDF -> one canonical, pre-normalised Zarr store with fixed splits."""


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Store path (default data/intermediate/<name>.zarr).")
@click.option("--force", is_flag=True, help="Rebuild even if recipe and inputs are unchanged.")
@click.option("--resume", is_flag=True, help="Go on from an interrupted build's last block (its .partial).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def build(recipe, out, force, resume, quiet, debug):
    """Build the store described by RECIPE."""
    from canonstore.preprocess import build as build_store

    _run(lambda: build_store(recipe, out, force=force, progress=not quiet, resume=resume), debug)


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect(store, debug):
    """Summarise STORE: channels, statistics, splits, layout, provenance."""
    from canonstore.formats import open_store
    from canonstore.formats.summary import describe

    click.echo(_run(lambda: describe(open_store(store)), debug))


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--inputs", is_flag=True, help="Also check that the raw inputs are unchanged since the build.")
def verify(store, inputs):
    """Recompute STORE's checksums and check its schema; exit 1 on any problem."""
    from canonstore.formats import verify_store
    from canonstore.formats.verify import verify_inputs

    problems = verify_store(store) + (verify_inputs(store) if inputs else [])
    for problem in problems:
        click.echo(f"FAIL {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{store}: OK (all files match the manifest, schema valid"
               f"{', inputs unchanged' if inputs else ''})")


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

    path = write_demo(out, size=size, years=tuple(range(2000, 2000 + years)))
    click.echo(f"wrote demo raw data to {path}")
