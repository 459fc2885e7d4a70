"""Forecast files: a run's forecasts of every sample of a split, in WeatherBench 2's layout, Zarr or NetCDF.

    write_forecast("runs/unet-demo-7a080bb3")          # -> forecasts/unet-demo-7a080bb3/test.zarr
    write_forecast("runs/unet-demo-7a080bb3", file_format="netcdf")   # -> .../test.nc

A forecast file is laid out as WeatherBench 2's (`wb2_layout`): dims `time` (the initialisation time, the
last input step), `prediction_timedelta` (timedelta64), `level` (hPa) for variables on levels, then
`latitude`, `longitude` (latitude increasing); variables named as in the sources (`geopotential(time,
prediction_timedelta, level, latitude, longitude)` holds the store's z500 and z850), in physical units with
the sources' `units`, `long_name` and `standard_name`; `valid_time(time, prediction_timedelta)` is the
time forecast. A store whose steps are not a fixed time apart (monthly, or no dates) gets `lead` in store
steps instead of `prediction_timedelta`. Any project can write one (or the older one-variable-per-channel
layout); `evaluate.score_forecast` scores it against a store, the same numbers as `make evaluate` (which is
forecast + score).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from canonstore._progress import progress as progress_bar
from canonstore._time import is_dates
from canonstore._warnings import zarr_notes_silenced
from canonstore.atomic import make_staging, remove_ours, replace_folder, write_file_atomic_with
from canonstore.errors import RunError
from canonstore.formats.spec import normalisation_scale
from canonstore.loaders.downscale import coarse_factor
from canonstore.training.runs import load_run
from canonstore.training.scoring import forecast, to_layout, valid_basis
from canonstore.training.tracking import read_config
from canonstore.training.wb2_layout import LEAD, LEVEL, ForecastLayout

logger = logging.getLogger(__name__)

BATCH = 64  # times per chunk of the file, and scored at once
KIND = "forecast file"  # the staging marker's kind (canonstore.atomic)
FORMATS = {"zarr": ".zarr", "netcdf": ".nc"}
RECORDED = ("run", "model", "split", "checkpoint", "store_build")  # attributes every forecast file of ours has


def check_replaceable(out: Path) -> None:
    """A forecast file may replace only an earlier forecast file of canonstore's (its attributes say so),
    never a folder of the user's that happens to sit at its path."""
    if not out.exists() and not out.is_symlink():
        return
    try:
        if out.is_symlink():
            attrs = {}
        elif out.suffix == ".nc":
            with xr.open_dataset(out) as ds:
                attrs = dict(ds.attrs)
        else:
            attrs = json.loads((out / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        attrs = {}
    if not all(key in attrs for key in RECORDED):
        raise RunError(
            f"{out} exists and is not a forecast file canonstore wrote (no {', '.join(RECORDED)} "
            "attributes); canonstore replaces only its own files: move it away or pass another "
            "--forecasts folder"
        )


def forecast_path(
    run_name: str, split: str, out_dir: str | Path = "forecasts", steps: int | None = None, file_format: str = "zarr"
) -> Path:
    """forecasts/<run>/<split>.zarr (forecasts/<run>/<split>-steps<K>.zarr when run for K steps other
    than it was trained for; `.nc` for NetCDF): derived from the run's name, so no run overwrites another's."""
    if file_format not in FORMATS:
        raise RunError(f"forecast file format: expected one of {', '.join(FORMATS)}, got {file_format!r}")
    return Path(out_dir) / run_name / f"{split}{'' if steps is None else f'-steps{steps}'}{FORMATS[file_format]}"


def other_steps(run: dict, steps: int | None) -> int | None:
    """`steps` when it differs from the steps the run was trained to roll out, else None."""
    return steps if steps and steps != run.get("rollout", 1) else None


def write_forecast(
    folder: str | Path,
    split: str = "test",
    checkpoint: str = "best",
    store=None,
    out_dir: str | Path = "forecasts",
    steps: int | None = None,
    progress: bool = False,
    file_format: str = "zarr",
) -> Path:
    """Write run `folder`'s `checkpoint` predictions for every sample of `split` to its forecast file;
    `steps` K: run the model autoregressively for K steps of its lead (see `runs.load_run`); `progress`: a bar
    (`canonstore._progress`); `file_format`: `zarr` or `netcdf` (written as Zarr, then converted)."""
    folder = Path(folder)
    out = forecast_path(folder.name, split, out_dir, other_steps(read_config(folder), steps), file_format)
    check_replaceable(out)  # before the model runs: a user's file there is refused
    run, store, model, loader, saved = load_run(folder, split, checkpoint, store, steps)
    dataset = loader.dataset
    names = dataset.target_channels
    loader.set_epoch(0)
    init = dataset.times[loader.sampler.positions().numpy()]
    mean = torch.tensor(store.stats["mean"][dataset.targets], dtype=torch.float64)
    scale = torch.tensor(normalisation_scale(store.stats["std"])[dataset.targets], dtype=torch.float64)
    zarr_out = out.with_suffix(".zarr")
    staging = make_staging(zarr_out.with_name(zarr_out.name + ".partial"), KIND)  # a user's folder there is refused
    leads = list(dataset.leads)
    layout = ForecastLayout.of(store, names)
    template = _template(
        store,
        layout,
        names,
        init,
        leads,
        {
            "run": folder.name,
            "model": run["model"],
            "split": split,
            "checkpoint": checkpoint,
            "epoch": saved.get("epoch"),
            "store": run["store"]["name"],
            "store_build": run["store"]["build"],
            "lat_weighted": int(run["lat_weighted"]),
            "task": run.get("task", "forecast"),
            "rollout": run.get("rollout", 1),
            **(
                {"coarse_factor": list(coarse_factor(dataset.sample_space, run["coarse"]))}
                if run.get("task") == "downscaling"
                else {}
            ),
        },
    )
    lead_dim = LEAD if LEAD in template.dims else "lead"
    with zarr_notes_silenced():  # consolidated metadata, our staging marker: both on purpose
        template.to_zarr(staging, mode="a", compute=False, consolidated=True)  # "w" would delete the marker
    view = (1, 1, -1) + (1,) * len(dataset.sample_space)  # (time, lead, channel, *space)
    mean, scale = mean.view(view), scale.view(view)
    # the climatology baseline is a function of the valid time
    basis = valid_basis(store, init, leads, model) if getattr(model, "needs_time", False) else None
    start = 0
    with torch.inference_mode(), progress_bar(len(init), f"forecast {split}", "time", enabled=progress) as bar:
        model.eval()
        for x, _ in loader:
            rows = slice(start, start + x.shape[0])
            b = None if basis is None else basis[rows].to(x.device)
            predicted = forecast(model, to_layout(x), b, init[rows]).double().cpu()
            predicted = predicted.reshape(x.shape[0], len(leads), len(names), *dataset.sample_space)
            values = (predicted * scale + mean).float().numpy()
            part = xr.Dataset({v.name: (layout.dims(v, lead_dim), layout.values(v, values)) for v in layout.variables})
            part.to_zarr(staging, region={"time": rows})
            start += x.shape[0]
            bar.update(x.shape[0])
    if file_format == "netcdf":  # streamed chunk by chunk from the finished Zarr, then renamed into place
        with xr.open_zarr(staging, consolidated=False) as ds:
            write_file_atomic_with(out, lambda tmp: ds.to_netcdf(tmp, format="NETCDF4"))
        remove_ours(staging, KIND)
    else:
        replace_folder(staging, out, KIND)
    logger.info(f"{out}: {run['model']} forecasts of {split} ({start} times x {len(names)} channels, physical units)")
    return out


def _template(
    store, layout: ForecastLayout, names: list[str], init: np.ndarray, leads: list[int], attrs: dict
) -> xr.Dataset:
    """The file's layout, written before any value: lazy NaNs, one chunk per batch of times."""
    import dask.array as da

    ds = store.to_xarray()
    grid = layout.grid.coords(ds)
    space = tuple(grid[d].shape[0] for d in layout.grid.file_dims)
    valid = np.stack([store.time[init + lead] for lead in leads], axis=1)
    ahead = time_ahead(store.time[init], valid)
    lead_dim = LEAD if ahead is not None else "lead"
    data = {}
    for v in layout.variables:
        levels = (len(layout.levels),) if v.on_levels else ()
        shape, chunks = (init.size, len(leads)) + levels + space, (BATCH, 1) + levels + space
        channel = names[next(t for t in v.targets if t >= 0)]
        described = channel_attrs(ds, store.channels.index(channel), v.on_levels)
        if v.on_levels:  # the others are NaN, no forecast: `wb2_layout.to_channels` scores only these
            described["levels_written"] = [lv for lv, t in zip(layout.levels, v.targets) if t >= 0]
        data[v.name] = (layout.dims(v, lead_dim), da.full(shape, np.nan, dtype=np.float32, chunks=chunks), described)
    if ahead is not None:
        lead_coord = (LEAD, ahead)
    else:
        lead_coord = ("lead", np.asarray(leads, np.int64), {"units": "store steps"})
    coords = {"time": store.time[init], lead_dim: lead_coord, "valid_time": (("time", lead_dim), valid), **grid}
    if layout.levels:
        coords[LEVEL] = (LEVEL, np.asarray(layout.levels), {"units": "hPa", "long_name": "pressure level"})
    return xr.Dataset(data, coords=coords, attrs=attrs)


def time_ahead(init: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """Each lead as timedelta64[ns] (`prediction_timedelta`): valid - init, the same at every init time; None
    when the store's times are no dates or a lead's time differs between inits (monthly steps)."""
    if init.size == 0 or not is_dates(init):
        return None
    try:
        ahead = np.asarray(
            [[np.timedelta64(v - i).astype("timedelta64[ns]") for v, i in zip(col, init)] for col in valid.T]
        )
    except (TypeError, ValueError):
        return None
    if ahead.dtype.kind != "m" or (ahead != ahead[:, :1]).any():
        return None
    return ahead[:, 0]


def channel_attrs(ds: xr.Dataset, c: int, on_levels: bool) -> dict:
    """A store channel's `units`, and the sources' `long_name` and `standard_name` where the store has them."""
    attrs = {"units": str(ds["channel_units"].values[c])}
    for key in ("long_name", "standard_name"):
        if f"channel_{key}" in ds and str(ds[f"channel_{key}"].values[c]):
            attrs[key] = str(ds[f"channel_{key}"].values[c])
    if not on_levels and not np.isnan(float(ds["channel_level"].values[c])):
        attrs["level_hPa"] = float(ds["channel_level"].values[c])
    return attrs
