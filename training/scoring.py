"""Scoring a model on a loader's batches, as training validates: forecasts in bf16 autocast, scores per lead.

    val = score(model, val_loader, store, weights, masks, climatology)   # {"loss", "overall", "channels", ...}

`forecast` is the one place a model is called (training steps, validation and forecast files), so the
climatology gets its time basis and a rollout with encodings its store steps everywhere alike.
"""

from __future__ import annotations

import numpy as np
import torch

from canonstore.formats.spec import normalisation_scale
from canonstore.training.baselines import time_basis
from canonstore.training.metrics import Scores, TargetMasks


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

    `masks` weighs filled points 0, `climatology` (`climatology.acc_reference`) is the ACC's reference, and
    `distributed` sums the scores of all processes, each of which scored its own share of the split.
    """
    model.eval()
    dataset = loader.dataset
    loader.set_epoch(0)
    steps = dataset.times[loader.sampler.positions().numpy()]
    basis = valid_basis(store, steps, dataset.leads, model) if getattr(model, "needs_time", False) else None
    valid_times = store.time[steps[:, None] + np.asarray(dataset.leads)[None, :]]  # (sample, lead)
    scores, start = Scores(weights.repeat(len(dataset.leads), *[1] * (weights.ndim - 1))), 0
    for x, y in loader:
        rows = slice(start, start + x.shape[0])
        y, valid = masks.split(y) if masks is not None else (y, None)
        b = None if basis is None else basis[rows].to(x.device)
        clim = None if climatology is None else climatology.fields(valid_times[rows]).to(x.device)
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
