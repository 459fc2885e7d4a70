"""Forecast files: a run's forecasts of every sample of a split, written as a Zarr store xarray opens.

    write_forecast("runs/unet-demo-7a080bb3")          # -> forecasts/unet-demo-7a080bb3/test.zarr

A forecast file holds one variable per target channel, named as in the store (`z500`, `t2m`), dims
(time, lead, *space), in physical units (`units` attribute), with the store's spatial coordinates.
`time` is the initialisation time (the last input step), `lead` the number of store steps ahead (or a
time: `valid_times.lead_steps`), and `valid_time(time, lead)` the time forecast. Any project can write
one; `evaluate.score_forecast` scores it against a store, the same numbers as `make evaluate` (which
is forecast + score).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from canonstore._progress import progress as progress_bar
from canonstore._warnings import zarr_notes_silenced
from canonstore.atomic import make_staging, replace_folder
from canonstore.errors import RunError
from canonstore.formats.spec import normalisation_scale
from canonstore.loaders.downscale import coarse_factor
from canonstore.training.alignment import grid_coords
from canonstore.training.runs import load_run
from canonstore.training.scoring import forecast, to_layout, valid_basis
from canonstore.training.tracking import read_config

logger = logging.getLogger(__name__)

BATCH = 64  # times per chunk of the file, and scored at once
KIND = "forecast file"  # the staging marker's kind (canonstore.atomic)
RECORDED = ("run", "model", "split", "checkpoint", "store_build")  # attributes every forecast file of ours has


def check_replaceable(out: Path) -> None:
    """A forecast file may replace only an earlier forecast file of canonstore's (its attributes say so),
    never a folder of the user's that happens to sit at its path."""
    if not out.exists() and not out.is_symlink():
        return
    try:
        attrs = json.loads((out / "zarr.json").read_text()).get("attributes", {}) if not out.is_symlink() else {}
    except (OSError, ValueError, AttributeError):
        attrs = {}
    if not all(key in attrs for key in RECORDED):
        raise RunError(
            f"{out} exists and is not a forecast file canonstore wrote (no {', '.join(RECORDED)} "
            "attributes); canonstore replaces only its own files: move it away or pass another "
            "--forecasts folder"
        )


def forecast_path(run_name: str, split: str, out_dir: str | Path = "forecasts", steps: int | None = None) -> Path:
    """forecasts/<run>/<split>.zarr (forecasts/<run>/<split>-steps<K>.zarr when run for K steps other
    than it was trained for): derived from the run's name, so no run overwrites another's."""
    return Path(out_dir) / run_name / f"{split}{'' if steps is None else f'-steps{steps}'}.zarr"


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
) -> Path:
    """Write run `folder`'s `checkpoint` predictions for every sample of `split` to its forecast file;
    `steps` K: run the model autoregressively for K steps of its lead (see `runs.load_run`); `progress`: a bar
    (`canonstore._progress`)."""
    folder = Path(folder)
    run, store, model, loader, saved = load_run(folder, split, checkpoint, store, steps)
    dataset = loader.dataset
    names = dataset.target_channels
    loader.set_epoch(0)
    init = dataset.times[loader.sampler.positions().numpy()]
    mean = torch.tensor(store.stats["mean"][dataset.targets], dtype=torch.float64)
    scale = torch.tensor(normalisation_scale(store.stats["std"])[dataset.targets], dtype=torch.float64)
    out = forecast_path(folder.name, split, out_dir, other_steps(read_config(folder), steps))
    check_replaceable(out)
    staging = make_staging(out.with_name(out.name + ".partial"), KIND)  # a user's folder there is refused
    leads = list(dataset.leads)
    template = _template(
        store,
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
            part = xr.Dataset({n: (("time", "lead") + store.dims[2:], values[:, :, c]) for c, n in enumerate(names)})
            part.to_zarr(staging, region={"time": rows})
            start += x.shape[0]
            bar.update(x.shape[0])
    replace_folder(staging, out, KIND)
    logger.info(f"{out}: {run['model']} forecasts of {split} ({start} times x {len(names)} channels, physical units)")
    return out


def _template(store, names: list[str], init: np.ndarray, leads: list[int], attrs: dict) -> xr.Dataset:
    """The file's layout, written before any value: lazy zeros, one chunk per batch of times."""
    import dask.array as da

    space_dims, space = store.dims[2:], store.shape[2:]
    ds = store.to_xarray()
    grid = {c: xr.Variable(ds[c].dims, ds[c].values, ds[c].attrs) for c in grid_coords(ds, space_dims)}
    valid = np.stack([store.time[init + lead] for lead in leads], axis=1)
    data = {
        n: (
            ("time", "lead") + space_dims,
            da.zeros((init.size, len(leads)) + space, dtype=np.float32, chunks=(BATCH, 1) + space),
            {"units": str(ds["channel_units"].values[store.channels.index(n)])},
        )
        for n in names
    }
    return xr.Dataset(
        data,
        coords={
            "time": store.time[init],
            "lead": ("lead", np.asarray(leads, np.int64), {"units": "store steps"}),
            "valid_time": (("time", "lead"), valid),
            **grid,
        },
        attrs=attrs,
    )
