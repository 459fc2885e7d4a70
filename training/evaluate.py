"""Scoring: a model's forecasts over every sample of a split, in physical units (`make evaluate`).

evaluate("runs/unet-demo-7a080bb3")      # -> scores/unet-demo-7a080bb3.json (best checkpoint, test split)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch

from canonstore.errors import ConfigError, RunError
from canonstore.formats import open_store
from canonstore.formats.spec import normalisation_scale
from canonstore.training.checkpoint import load_checkpoint
from canonstore.training.data import make_loader, pick_device
from canonstore.training.metrics import Scores, TargetMasks
from canonstore.training.models import build_model, load_weights, time_basis
from canonstore.training.tracking import read_config, write_json


def to_layout(x: torch.Tensor) -> torch.Tensor:
    """channels_last on CUDA: the layout tensor cores want for convolutions (nothing on the CPU)."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda and x.ndim == 4 else x


def forecast(
    model: torch.nn.Module, x: torch.Tensor, basis: torch.Tensor | None = None, steps: np.ndarray | None = None
) -> torch.Tensor:
    """The model's prediction, in bf16 autocast on CUDA; the climatology also gets the time basis, a
    rollout with encodings the store step t of each sample (`steps`)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        if basis is not None:
            return model(x, basis)
        if getattr(getattr(model, "module", model), "needs_steps", False):  # DDP wraps the model as .module
            return model(x, steps=steps)
        return model(x)


def valid_basis(store, steps: np.ndarray, leads, model) -> torch.Tensor:
    """(sample, lead, basis) time basis of each sample's valid times t + lead, for a climatology `model`."""
    valid = store.time[np.asarray(steps)[:, None] + np.asarray(leads)[None, :]]
    basis = time_basis(valid.ravel(), model.annual, model.diurnal)
    return torch.from_numpy(basis.reshape(valid.shape + (-1,)))


@torch.inference_mode()
def score(
    model: torch.nn.Module,
    loader,
    store,
    weights: torch.Tensor,
    masks: TargetMasks | None = None,
    climatology=None,
    distributed: bool = False,
) -> dict:
    """Scores of `model` on every sample of `loader` (in order): see training.metrics and `lead_scores`.

    `masks` weighs filled points 0, `climatology` (a fitted Climatology) is the ACC's reference, and
    `distributed` sums the scores of all processes, each of which scored its own share of the split.
    """
    model.eval()
    dataset = loader.dataset
    loader.set_epoch(0)
    steps = dataset.times[loader.sampler.positions().numpy()]
    basis = valid_basis(store, steps, dataset.leads, model) if getattr(model, "needs_time", False) else None
    reference = None if climatology is None else valid_basis(store, steps, dataset.leads, climatology)
    scores, start = Scores(weights.repeat(len(dataset.leads), *[1] * (weights.ndim - 1))), 0
    for x, y in loader:
        rows = slice(start, start + x.shape[0])
        y, valid = masks.split(y) if masks is not None else (y, None)
        b = None if basis is None else basis[rows].to(x.device)
        clim = None if climatology is None else climatology(x, reference[rows].to(x.device))
        scores.update(forecast(model, to_layout(x), b, steps[rows]).float(), y, valid, clim)
        start += x.shape[0]
    if distributed:
        scores.all_reduce()
    return lead_scores(scores, dataset, store)


def lead_scores(scores: Scores, dataset, store) -> dict:
    """`scores.result` for the dataset's targets at every lead; with several leads, "overall" and the loss
    average over leads too (the training objective), channels are named `<channel>@t+<lead>`, and
    "leads" holds each lead's own result."""
    scale = normalisation_scale(store.stats["std"])[dataset.targets]
    units = [str(u) for u in store.to_xarray()["channel_units"].values[dataset.targets]]
    n, leads = len(dataset.targets), dataset.leads
    result = scores.result(dataset.lead_channels, np.tile(scale, len(leads)), units * len(leads))
    if len(leads) > 1:
        result["leads"] = {
            lead: scores.part(slice(k * n, (k + 1) * n)).result(dataset.target_channels, scale, units)
            for k, lead in enumerate(leads)
        }
    return result


def rmse_by_lead(leads: dict | None) -> str:
    """' (RMSE by lead: 1: 0.1234, 2: 0.2345 std)' for a result with several leads, else ''."""
    if not leads or len(leads) < 2:
        return ""
    return " (RMSE by lead: " + ", ".join(f"{k}: {v['overall']['rmse']:.4f}" for k, v in leads.items()) + " std)"


def load_run(folder: Path, split: str, checkpoint: str = "best", store=None, steps: int | None = None):
    """(run config, store, model with the checkpoint's weights, ordered loader of `split`, checkpoint).

    `steps` K runs a trained model autoregressively for K steps of its lead (a one-step run, or a
    rollout run for more or fewer steps than it was trained on): the loader's targets are then at
    lead, 2 lead, ..., K lead, and the returned config says `rollout: K`.
    """
    from canonstore.training.config import TRAINED, check_rollout_history
    from canonstore.training.forecasts import check_same_build

    run = read_config(folder)
    if store is None or isinstance(store, (str, Path)):
        store = open_store(store or run["store"]["path"])
    check_same_build(store, run, folder)
    path = folder / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        raise RunError(f"{path} does not exist: train the run first (make train MODEL={run['model']})")
    if steps and steps != run.get("rollout", 1):
        if run["model"] not in TRAINED or not isinstance(run["lead"], int) or run["lead"] < 1:
            raise ConfigError(
                f"steps={steps}: only a trained model with one lead >= 1 is run autoregressively; "
                f"run {folder.name} is {run['model']} at lead {run['lead']} (persistence and "
                "climatology: train them with rollout=K)"
            )
        run = {**run, "rollout": steps}
    if run.get("rollout", 1) > 1:  # also a run trained so before rollouts with history were refused
        check_rollout_history(f"steps={run['rollout']}", run["history"], run["lead"])
    device = pick_device("cpu" if run["device"] == "cpu" else "auto")
    saved = load_checkpoint(path, device)
    loader = make_loader(run, store, split, device, train=False)
    model = build_model(run, loader.dataset).to(device)
    load_weights(model, saved["model"])
    return run, store, model, loader, saved


def evaluate(
    folder: str | Path,
    scores_dir: str | Path = "scores",
    split: str = "test",
    checkpoint: str = "best",
    store=None,
    forecasts_dir: str | Path = "forecasts",
    log=print,
    steps: int | None = None,
) -> Path:
    """Forecast + score: write run `folder`'s `checkpoint` forecasts of `split` to
    forecasts/<run-name>/<split>.zarr, score that file, and write scores/<run-name>.json (test) or
    scores/<run-name>-<split>.json; returns the scores' path.

    `store` (a path or Store) defaults to the one the run was trained on; it must be the same build.
    `steps` K runs the model autoregressively for K steps of its lead (`load_run`); its files get
    `-steps<K>` in their names unless the run was trained for K steps.
    """
    from canonstore.training.forecasts import other_steps, score_forecast, write_forecast

    folder = Path(folder)
    run = read_config(folder)
    store = open_store(store or run["store"]["path"]) if store is None or isinstance(store, (str, Path)) else store
    path = write_forecast(folder, split, checkpoint, store, forecasts_dir, log=log, steps=steps)
    scored = score_forecast(path, store, run["lat_weighted"])
    saved = load_checkpoint(folder / "checkpoints" / f"{checkpoint}.pt", torch.device("cpu"))
    suffix = ("" if split == "test" else f"-{split}") + (f"-steps{steps}" if other_steps(run, steps) else "")
    out = Path(scores_dir) / f"{folder.name}{suffix}.json"
    if other_steps(run, steps):
        run = {**run, "rollout": steps}
    out.parent.mkdir(parents=True, exist_ok=True)
    result = scored["scores"]
    write_json(
        out,
        {
            "run": folder.name,
            "model": run["model"],
            "split": split,
            "checkpoint": checkpoint,
            "epoch": saved["epoch"],
            "store": run["store"],
            "forecast": str(path),
            "scores": result,
            "leads": {str(k): v for k, v in scored["leads"].items()},
            "acc_climatology": scored["climatology"],
            "config": run,
            "evaluated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    overall = result["overall"]
    first = "" if len(scored["leads"]) < 2 else f" at lead {next(iter(scored['leads']))}"
    log(
        f"{out}: {run['model']} on {split}{first}: RMSE {overall['rmse']:.4f} std, MAE {overall['mae']:.4f} std, "
        f"R² {overall['r2']:.4f}, ACC {overall['acc']:.4f} ({result['samples']} samples)"
        + rmse_by_lead(scored["leads"])
    )
    return out
