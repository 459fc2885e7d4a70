"""Scoring forecast files against a store, into scores JSON: any project's file, or a run's (`make evaluate`).

    evaluate("runs/unet-demo-7a080bb3")      # -> scores/unet-demo-7a080bb3.json (best checkpoint, test split)
    score_to_file("forecasts/unet-demo-7a080bb3/test.zarr", "data/intermediate/demo.zarr")   # `canonstore score`

`evaluate` is `forecasts.write_forecast` + `score_forecast`: a run is scored from its forecast file, so
its numbers are those any other project's file gets. The file is matched to the store by values
(`training.alignment`: grid, units; `training.valid_times`: times), never by position.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import torch

from canonstore._progress import progress as progress_bar
from canonstore.errors import RunError
from canonstore.formats import open_store
from canonstore.formats.spec import normalisation_scale
from canonstore.loaders.downscale import coarse_up
from canonstore.training.alignment import align_forecast, check_plausible
from canonstore.training.checkpoint import load_checkpoint
from canonstore.training.climatology import acc_reference
from canonstore.training.forecasts import BATCH, other_steps, write_forecast
from canonstore.training.metrics import Scores, area_weights, validity
from canonstore.training.scoring import rmse_by_lead
from canonstore.training.tracking import read_config, write_json

logger = logging.getLogger(__name__)


def evaluate(
    folder: str | Path,
    scores_dir: str | Path = "scores",
    split: str = "test",
    checkpoint: str = "best",
    store=None,
    forecasts_dir: str | Path = "forecasts",
    steps: int | None = None,
    progress: bool = False,
    file_format: str = "zarr",
) -> Path:
    """Forecast + score: write run `folder`'s `checkpoint` forecasts of `split` to
    forecasts/<run-name>/<split>.zarr, score that file, and write scores/<run-name>.json (test) or
    scores/<run-name>-<split>.json; returns the scores' path.

    `store` (a path or Store) defaults to the one the run was trained on; it must be the same build.
    `steps` K runs the model autoregressively for K steps of its lead (`runs.load_run`); its files get
    `-steps<K>` in their names unless the run was trained for K steps.
    """
    folder = Path(folder)
    run = read_config(folder)
    store = open_store(store or run["store"]["path"]) if store is None or isinstance(store, (str, Path)) else store
    path = write_forecast(
        folder, split, checkpoint, store, forecasts_dir, steps=steps, progress=progress, file_format=file_format
    )
    scored = score_forecast(path, store, run["lat_weighted"], progress)
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
            **_scores_record(scored),
            "config": run,
            "evaluated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    overall = result["overall"]
    first = "" if len(scored["leads"]) < 2 else f" at lead {next(iter(scored['leads']))}"
    logger.info(
        f"{out}: {run['model']} on {split}{first}: RMSE {overall['rmse']:.4f} std, MAE {overall['mae']:.4f} std, "
        f"R² {overall['r2']:.4f}, ACC {overall['acc']:.4f} ({result['samples']} samples)"
        + rmse_by_lead(scored["leads"])
    )
    return out


def score_to_file(
    forecast_file: str | Path,
    store,
    out: str | Path | None = None,
    lat_weighted: bool | None = None,
    progress: bool = False,
    reference: str = "window",
    rename: dict[str, str] | None = None,
) -> Path:
    """Score the forecast file at `forecast_file` against `store` (`score_forecast`) into the scores JSON `out`
    (default scores/<folder>-<file>-scored.json); returns its path."""
    path = Path(forecast_file)
    scored = score_forecast(path, store, lat_weighted, progress, reference, rename)
    if scored["not_scored"]:
        logger.warning(f"not scored (no channel of the store): {', '.join(scored['not_scored'])}")
    target = Path(out) if out else Path("scores") / f"{path.parent.name}-{path.stem}-scored.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, {"forecast": str(path), "store": str(getattr(store, "path", store)), **_scores_record(scored)})
    overall = scored["scores"]["overall"]
    logger.info(
        f"{target}: RMSE {overall['rmse']:.4f} std, MAE {overall['mae']:.4f} std, "
        f"ACC {overall['acc']:.4f} ({scored['scores']['samples']} times)"
    )
    return target


def _scores_record(scored: dict) -> dict:
    """A scores JSON's scores: the first lead's, each lead's, and what the ACC was computed against."""
    return {
        "scores": scored["scores"],
        "leads": {str(k): v for k, v in scored["leads"].items()},
        "acc_climatology": scored["climatology"],
        "not_scored": scored["not_scored"],
    }


def score_forecast(
    path: str | Path,
    store,
    lat_weighted: bool | None = None,
    progress: bool = False,
    reference: str = "window",
    rename: dict[str, str] | None = None,
) -> dict:
    """Scores of the forecast file at `path` against `store` (a path or Store): see `training.metrics`.

    Returns {"leads": {lead: scores}, "scores": the first lead's scores, "climatology": the ACC's
    reference (`describe_climatology`)}; a downscaling file (its `coarse_factor` attribute) also gets
    "residual": the scores of R_pred = forecast - y_CU against R = y_HR - y_CU (y_CU: the coarse-up of
    the truth), next to the reconstructed field's. Each variable must be a store channel; the file is
    matched to the store by values (`training.alignment`: grid, units, valid times), never by position.
    `lat_weighted` defaults to the file's `lat_weighted` attribute (written by `write_forecast`), else True.
    `reference`: the ACC's climatology (`climatology.acc_reference`: `window`, WB2's, or `harmonic`); `rename`:
    {file variable: store variable} beyond `canonstore.names`' table. "not_scored" lists the file's variables
    (`name@level`) that are no store channel.
    """
    store = open_store(store) if isinstance(store, (str, Path)) else store
    aligned = align_forecast(path, store, rename)
    path, fc, names, targets, units = aligned.path, aligned.fc, aligned.names, aligned.targets, aligned.units
    truth, steps_ahead = aligned.truth, aligned.steps_ahead
    if lat_weighted is None:
        lat_weighted = bool(fc.attrs.get("lat_weighted", 1))
    weights = area_weights(store, targets, lat_weighted)
    climatology = acc_reference(store, targets, reference)
    masks = validity(store, targets)
    mean = store.stats["mean"][targets]
    scale = normalisation_scale(store.stats["std"])[targets]
    view = (1, -1) + (1,) * (store.array.ndim - 2)
    first = aligned.physical(0, slice(0, BATCH))  # tells other units from a bad forecast
    for c, n in enumerate(names):
        check_plausible(n, first[:, c], mean[c], scale[c], units[c], "units" in fc[n].attrs, path)
    leads = {}
    with progress_bar(truth.size, "score", "forecast", enabled=progress) as bar:
        for k, lead in enumerate(steps_ahead.tolist()):
            steps = truth[:, k]
            scores = Scores(weights)
            residual = Scores(weights) if "coarse_factor" in fc.attrs else None
            for a in range(0, steps.size, BATCH):
                rows = steps[a : a + BATCH]
                stored = np.stack([np.asarray(store.array[int(s)]) for s in rows])
                y = torch.from_numpy(stored[:, targets].astype(np.float32))
                physical = aligned.physical(k, slice(a, a + BATCH))
                prediction = torch.from_numpy(
                    ((physical - mean.reshape(view)) / scale.reshape(view)).astype(np.float32)
                )
                valid = _validity(stored, masks)
                _check_no_nan_scored(prediction, weights if valid is None else weights * valid, names, path, lead)
                bar.update(rows.size)
                scores.update(prediction, y, valid, climatology.fields(store.time[rows]))
                if residual is not None:  # uncentred ACC of the residuals: their climatology is 0
                    coarse = coarse_up(y.double(), tuple(fc.attrs["coarse_factor"]), periodic=store.longitude_periodic)
                    residual.update(prediction.double() - coarse, y.double() - coarse, valid, torch.zeros_like(coarse))
            leads[int(lead)] = scores.result(names, scale, units)
            if residual is not None:
                leads[int(lead)]["residual"] = residual.result(names, scale, units)
    return {
        "leads": leads,
        "scores": leads[int(steps_ahead[0])],
        "climatology": climatology.describe(),
        "not_scored": list(aligned.not_scored),
    }


def _check_no_nan_scored(prediction: torch.Tensor, weights: torch.Tensor, names: list[str], path, lead) -> None:
    """A NaN or infinite value where a point is scored (weight > 0) is refused, naming the variable: it would make
    the score NaN or inf (float16 overflows to inf above 65504), and leaving it out would score the forecast on
    fewer points than the others. Where nothing is scored (a masked point, a filled one) NaN is fine: WB2's
    files hold NaN over land for ocean variables."""
    bad = ~torch.isfinite(prediction) & (weights > 0)
    if bool(bad.any()):
        c = int(bad.flatten(2).any(-1).any(0).nonzero()[0])
        what = "NaN" if bool(torch.isnan(prediction[:, c][bad[:, c]]).any()) else "infinite"
        raise RunError(
            f"{path}: '{names[c]}' at lead {lead} is {what} at {int(bad[:, c].sum())} point(s) the store scores "
            "(observed, weight > 0): forecast every scored point, or score against a store whose mask leaves them out"
        )


def _validity(stored: np.ndarray, masks: list) -> torch.Tensor | None:
    """0/1 per point from each target's `_valid` channel (filled points weigh 0), or None."""
    if all(m is None for m in masks):
        return None
    valid = np.ones((stored.shape[0], len(masks)) + stored.shape[2:], dtype=np.float32)
    for c, mask in enumerate(masks):
        if mask is not None:
            valid[:, c] = stored[:, mask[0]] > mask[1]
    return torch.from_numpy(valid)
