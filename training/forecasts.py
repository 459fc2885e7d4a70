"""Forecasts as files, and scoring any forecast file against a store.

    write_forecast("runs/unet-demo-7a080bb3")          # -> forecasts/unet-demo-7a080bb3/test.zarr
    score_forecast("forecasts/unet-demo-7a080bb3/test.zarr", "data/intermediate/demo.zarr")

A forecast file is a Zarr store that xarray opens: one variable per target channel, named as in the
store (`z500`, `t2m`), dims (time, lead, *space), in physical units (`units` attribute), with the
store's spatial coordinates. `time` is the initialisation time (the last input step), `lead` the
number of store steps ahead (or a time: `alignment.lead_steps`), and `valid_time(time, lead)` the
time forecast. Any project can write one; `score_forecast` finds each valid time in the store and
scores it with the metrics of `training.metrics`, the same numbers as `make evaluate` (which is
forecast + score).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from canonstore.atomic import make_staging, replace_folder
from canonstore.errors import RunError
from canonstore.formats import open_store
from canonstore.formats.spec import normalisation_scale
from canonstore.loaders.downscale import coarse_factor, coarse_up
from canonstore.training.alignment import check_plausible, grid_coords, onto_grid, truth_steps, units_of
from canonstore.training.metrics import Scores, area_weights, validity
from canonstore.training.models import describe_climatology, reference_climatology, time_basis
from canonstore.training.tracking import read_config

BATCH = 64  # times scored at once
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
    log=print,
    steps: int | None = None,
) -> Path:
    """Write run `folder`'s `checkpoint` predictions for every sample of `split` to its forecast file;
    `steps` K: run the model autoregressively for K steps of its lead (see `evaluate.load_run`)."""
    from canonstore.training.evaluate import forecast, load_run, to_layout, valid_basis

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
    with warnings.catch_warnings():  # the staging marker beside the arrays is not a Zarr node, on purpose
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        template.to_zarr(staging, mode="a", compute=False, consolidated=True)  # "w" would delete the marker
    view = (1, 1, -1) + (1,) * len(dataset.sample_space)  # (time, lead, channel, *space)
    mean, scale = mean.view(view), scale.view(view)
    # the climatology baseline is a function of the valid time
    basis = valid_basis(store, init, leads, model) if getattr(model, "needs_time", False) else None
    start = 0
    with torch.inference_mode():
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
    replace_folder(staging, out, KIND)
    log(f"{out}: {run['model']} forecasts of {split} ({start} times x {len(names)} channels, physical units)")
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


def score_forecast(path: str | Path, store, lat_weighted: bool | None = None) -> dict:
    """Scores of the forecast file at `path` against `store` (a path or Store): see `training.metrics`.

    Returns {"leads": {lead: scores}, "scores": the first lead's scores, "climatology": the ACC's
    reference (`describe_climatology`)}; a downscaling file (its `coarse_factor` attribute) also gets
    "residual": the scores of R_pred = forecast - y_CU against R = y_HR - y_CU (y_CU: the coarse-up of
    the truth), next to the reconstructed field's. Each variable must be a store channel; the file is
    matched to the store by values (`training.alignment`: grid, units, valid times), never by position.
    `lat_weighted` defaults to the file's `lat_weighted` attribute (written by `write_forecast`), else True.
    """
    path = Path(path)
    store = open_store(store) if isinstance(store, (str, Path)) else store
    fc = _open(path)
    names = list(map(str, fc.data_vars))
    unknown = [n for n in names if n not in store.channels]
    if unknown:
        raise RunError(f"{path}: variable(s) {unknown} are not channels of {store.path} ({store.channels})")
    names.sort(key=store.channels.index)  # the store's channel order (Zarr lists arrays alphabetically)
    fc = onto_grid(fc, store, names, path)
    truth, steps_ahead = truth_steps(fc, store, path)
    targets = np.array([store.channels.index(n) for n in names])
    units = [str(u) for u in store.to_xarray()["channel_units"].values[targets]]
    to_store_units = [units_of(fc[n], u, n, path) for n, u in zip(names, units)]
    if lat_weighted is None:
        lat_weighted = bool(fc.attrs.get("lat_weighted", 1))
    weights = area_weights(store, targets, lat_weighted)
    climatology = reference_climatology(store, targets)
    masks = validity(store, targets)
    mean = store.stats["mean"][targets]
    scale = normalisation_scale(store.stats["std"])[targets]
    view = (1, -1) + (1,) * (store.array.ndim - 2)
    first = _in_store_units(fc, names, to_store_units, 0, slice(0, BATCH))  # tells other units from a bad forecast
    for c, n in enumerate(names):
        check_plausible(n, first[:, c], mean[c], scale[c], units[c], "units" in fc[n].attrs, path)
    leads = {}
    for k, lead in enumerate(steps_ahead.tolist()):
        steps = truth[:, k]
        scores = Scores(weights)
        residual = Scores(weights) if "coarse_factor" in fc.attrs else None
        for a in range(0, steps.size, BATCH):
            rows = steps[a : a + BATCH]
            stored = np.stack([np.asarray(store.array[int(s)]) for s in rows])
            y = torch.from_numpy(stored[:, targets].astype(np.float32))
            physical = _in_store_units(fc, names, to_store_units, k, slice(a, a + BATCH))
            prediction = torch.from_numpy(((physical - mean.reshape(view)) / scale.reshape(view)).astype(np.float32))
            valid = _validity(stored, masks)
            basis = torch.from_numpy(time_basis(store.time[rows], climatology.annual, climatology.diurnal))
            with torch.inference_mode():
                clim = climatology(y, basis)
            scores.update(prediction, y, valid, clim)
            if residual is not None:  # uncentred ACC of the residuals: their climatology is 0
                coarse = coarse_up(y.double(), tuple(fc.attrs["coarse_factor"]), periodic=store.longitude_periodic)
                residual.update(prediction.double() - coarse, y.double() - coarse, valid, torch.zeros_like(coarse))
        leads[int(lead)] = scores.result(names, scale, units)
        if residual is not None:
            leads[int(lead)]["residual"] = residual.result(names, scale, units)
    return {"leads": leads, "scores": leads[int(steps_ahead[0])], "climatology": describe_climatology(climatology)}


def _in_store_units(fc: xr.Dataset, names: list[str], conversions: list, lead: int, rows: slice) -> np.ndarray:
    """(time, channel, *space) float64: the forecasts of init times `rows` at the `lead`-th lead, in the
    store's units."""
    return np.stack(
        [
            fc[n][rows, lead].values.astype(np.float64) * factor + offset
            for n, (factor, offset) in zip(names, conversions)
        ],
        axis=1,
    )


def _open(path: Path) -> xr.Dataset:
    if not path.exists():
        raise RunError(f"{path}: no such forecast file")
    try:
        return xr.open_zarr(path, consolidated=None, chunks=None)
    except (ValueError, KeyError, OSError) as exc:  # zarr says why in its own words
        raise RunError(f"{path}: not a forecast file xarray can open as Zarr ({exc})") from exc


def _validity(stored: np.ndarray, masks: list) -> torch.Tensor | None:
    """0/1 per point from each target's `_valid` channel (filled points weigh 0), or None."""
    if all(m is None for m in masks):
        return None
    valid = np.ones((stored.shape[0], len(masks)) + stored.shape[2:], dtype=np.float32)
    for c, mask in enumerate(masks):
        if mask is not None:
            valid[:, c] = stored[:, mask[0]] > mask[1]
    return torch.from_numpy(valid)


def check_same_build(store, run: dict, folder: Path) -> None:
    if store.build_id != run["store"]["build"]:  # the build `store` reads, not whatever its path holds now
        raise RunError(
            f"{store.path} is not the build run {folder.name} was trained on "
            f"(it was rebuilt since?): train again with `make train`"
        )
