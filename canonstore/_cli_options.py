"""The click options `train`, `forecast` and `evaluate` share, and the run they name: the same options always
reach the same run folder; and `build`'s options."""

from __future__ import annotations

import click

from canonstore.splits.names import SPLITS


def build_options(fn):
    """`build RECIPE` and its options, passed on by name to `preprocess.build`."""
    options = [
        click.argument("recipe", type=click.Path(dir_okay=False)),
        click.option(
            "--out",
            type=click.Path(file_okay=False),
            help="Store path or s3:// URL (default data/intermediate/<name>.zarr).",
        ),
        click.option("--force", is_flag=True, help="Rebuild even if recipe and inputs are unchanged."),
        click.option("--resume", is_flag=True, help="Go on from an interrupted build's finished shards (.partial)."),
        click.option("--workers", type=click.IntRange(min=1), help="Run on a local dask cluster of N workers."),
        click.option("--scheduler", help="Run on the dask.distributed scheduler at this address (tcp://host:8786)."),
        click.option(
            "--scheduler-file",
            type=click.Path(dir_okay=False),
            help="Run on the dask scheduler this file names (what dask-jobqueue and dask-mpi write).",
        ),
        click.option(
            "--force-unlock",
            is_flag=True,
            help="--out s3://: remove the publish lock a killed build on another machine left beside the store.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bars."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def training_options(fn):
    """The options `train` and `evaluate` share: which config, model and store make the run."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help="Training config (YAML; default: the code's defaults, which configs/default.yaml repeats).",
        ),
        click.option(
            "--model",
            type=click.Choice(["unet", "mlp", "persistence", "climatology", "coarse-up"]),
            help="Overrides the config's model.",
        ),
        click.option(
            "--store",
            type=click.Path(file_okay=False),
            default="data/intermediate/demo.zarr",
            show_default=True,
            help="The store to train on.",
        ),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override a config key, e.g. --set epochs=5 --set unet.width=32 (repeatable).",
        ),
        click.option(
            "--runs", default="runs", show_default=True, type=click.Path(file_okay=False), help="Folder of run folders."
        ),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def config_of(config_path, model, overrides):
    """The config a command's --config, --model and --set options make (the same for train, forecast, evaluate)."""
    from canonstore.training import load_config, parse_overrides

    extra = parse_overrides(list(overrides))
    if model:
        extra["model"] = model
    return load_config(config_path, extra)


def bars(quiet: bool) -> bool:
    """Progress bars unless the command's `--quiet` or the global `canonstore -q` says none."""
    return not (quiet or click.get_current_context().find_root().params.get("quiet"))


def forecast_options(fn):
    """--split and --steps: which samples a run forecasts, and how many steps it rolls out; --format: Zarr or NetCDF;
    --quiet: no progress."""
    fn = click.option("--quiet", is_flag=True, help="No progress bars.")(fn)
    fn = click.option(
        "--format",
        "file_format",
        type=click.Choice(["zarr", "netcdf"]),
        default="zarr",
        show_default=True,
        help="The forecast file's format (WeatherBench 2's layout either way).",
    )(fn)
    fn = click.option(
        "--steps",
        type=click.IntRange(min=1),
        default=None,
        help="Run the model autoregressively for this many steps of its lead (default: as trained).",
    )(fn)
    return click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)(fn)


def folder_of(folder, config_path, model, overrides, store, runs):
    """The run folder given (--run), else the one the config, model and store name."""
    from canonstore.training import run_folder

    return folder or run_folder(config_of(config_path, model, overrides), store, runs)


def _renames(ctx, param, values) -> dict[str, str]:
    """`--rename A=B ...` as {A: B}; a pair without `=`, an empty side or a name given twice is a usage error."""
    pairs: dict[str, str] = {}
    for value in values:
        file_var, _, store_var = (part.strip() for part in value.partition("="))
        if not file_var or not store_var:
            raise click.BadParameter(f"expected FILE_VAR=STORE_VAR, got {value!r}", ctx, param)
        if file_var in pairs:
            raise click.BadParameter(f"{file_var!r} is renamed twice", ctx, param)
        pairs[file_var] = store_var
    return pairs


def score_options(fn):
    """`score`'s --rename (file variables by other names) and --acc-reference (the ACC's climatology)."""
    fn = click.option(
        "--acc-reference",
        type=click.Choice(["window", "harmonic"]),
        default="window",
        show_default=True,
        help="The ACC's climatology: WeatherBench 2's day x hour means (window) or the harmonic fit.",
    )(fn)
    return click.option(
        "--rename",
        "renames",
        multiple=True,
        callback=_renames,
        metavar="FILE_VAR=STORE_VAR",
        help="A file variable that is a store variable or channel by another name (repeatable), beyond the table.",
    )(fn)
