"""The reference training loop behind `make train`.

    config = load_config("configs/default.yaml", {"model": "unet", "epochs": 5})
    folder = train(config, "data/intermediate/demo.zarr")      # runs/unet-demo-<hash>/

Reproducible by construction: batch order is a function of (seed, epoch) (loaders.BatchSampler),
torch's global generator is reseeded from (seed, epoch) at every epoch, and a checkpoint holds all
other state, so a run resumed from any checkpoint, mid-epoch included, ends exactly where an
uninterrupted one would (on the CPU; CUDA kernels are not all deterministic). Under torchrun
(`make train NPROC=2`) each process trains on its own share of every epoch (DistributedDataParallel),
scores its own share of the validation split (reduced across processes, every sample exactly once),
and the first one checkpoints and logs. Every collective runs on the backend's device.
"""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path

import numpy as np
import torch

from canonstore.errors import ConfigError, StoreError
from canonstore.formats import open_store
from canonstore.training.checkpoint import load_checkpoint, save_checkpoint
from canonstore.training.climatology import acc_reference
from canonstore.training.config import TRAINED
from canonstore.training.data import make_loader, pick_device
from canonstore.training.distributed import DistributedContext
from canonstore.training.metrics import TargetMasks, area_weights, validity
from canonstore.training.models import build_model, load_weights
from canonstore.training.runs import resolve, run_name
from canonstore.training.scoring import rmse_by_lead, score
from canonstore.training.tracking import RunLog, train_log
from canonstore.training.trainer import Trainer, epoch_scores

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the loaders seed their own generators from the config's seed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(config: dict, store, runs_dir: str | Path = "runs", progress: bool = True, on_step=None) -> Path:
    """Train (or fit) `config["model"]` on `store`, resuming the run if it was interrupted.

    Returns the run's folder. A finished run is not trained again. `on_step(state)` is called after
    every optimizer step with {"epoch", "batch", "step"} (a hook for tests and custom logging).
    """
    store = open_store(store) if isinstance(store, (str, Path)) else store
    device = pick_device(config["device"])
    context = DistributedContext(device)
    run = resolve(config, store, device.type, context.world)
    folder = Path(runs_dir) / run_name(run)
    last = folder / "checkpoints" / "last.pt"
    if last.exists() and load_checkpoint(last)["finished"]:
        logger.info(f"{folder}: already trained (remove the folder to train it again)")
        return folder
    with train_log(folder) if context.main else contextlib.nullcontext():  # every line also in train.log
        return _train(run, store, folder, device, context, progress, on_step)


def _train(run: dict, store, folder: Path, device, context: DistributedContext, progress: bool, on_step) -> Path:
    """`train`'s work, once the run is named and its log is open."""
    last = folder / "checkpoints" / "last.pt"
    logger.debug(f"{folder.name}: resolved config {run}")
    seed_everything(run["seed"])
    torch.backends.cudnn.benchmark = device.type == "cuda"
    train_loader = make_loader(run, store, "train", device, train=True, rank=context.rank, world_size=context.world)
    if run["model"] in TRAINED:
        check_full_batch(train_loader, run, store, context.world)
    try:
        val_loader = make_loader(run, store, "val", device, train=False, rank=context.rank, world_size=context.world)
    except StoreError as exc:
        raise StoreError(
            f"{exc}: training picks its best epoch on the val split and needs a window there; give "
            "the recipe's `splits` a (longer) val range, or use a shorter history or lead"
        ) from None
    model = build_model(run, train_loader.dataset).to(device)
    if run.get("init") and not last.exists():  # before anything is written: weights that do not fit leave no run
        start_from(model, run["init"])
        if context.main:
            logger.info(f"starting from the weights of {run['init']['run']} ({run['init']['path']})")
    weights = area_weights(store, train_loader.dataset.targets, run["lat_weighted"]).to(device)
    masks = TargetMasks(store, train_loader.dataset)
    try:  # the ACC's reference: WB2's day x hour means, or the harmonic fit where those do not fit in memory
        climatology = acc_reference(store, train_loader.dataset.targets)
    except ConfigError as exc:
        logger.warning(f"{exc}; validation's ACC uses the harmonic fit instead")
        climatology = acc_reference(store, train_loader.dataset.targets, "harmonic")
    runlog = RunLog(folder, folder.name, run) if context.main else None
    try:
        if runlog:
            for warning in run["warnings"]:
                logger.warning(warning)
            runlog.write_config()
            logger.info(
                f"{folder.name}: {run['model']} on {store.path} ({len(train_loader.dataset)} train samples, "
                f"{device.type}, loader {run['loader']}, {sum(p.numel() for p in model.parameters())} parameters)"
            )
        if run["model"] not in TRAINED:
            fit_baseline(model, run, store, val_loader, weights, masks, climatology, folder, runlog, context)
            return folder

        trainer = Trainer(run, folder, model, train_loader, weights, masks, context)
        if last.exists():
            trainer.resume(last)
        for epoch in range(trainer.state["epoch"], run["epochs"]):
            train_loss, timing = trainer.train_epoch(epoch, progress and context.main, on_step)
            stop = False
            val = score(model, val_loader, store, weights, masks, climatology, context.world > 1)
            if context.main:
                stop = trainer.record_epoch(epoch, train_loss, val, timing)
                state = trainer.state
                logger.info(
                    f"epoch {epoch + 1}/{run['epochs']}: train loss {train_loss:.5f}, val loss {val['loss']:.5f}, "
                    f"val RMSE {val['overall']['rmse']:.4f} std{rmse_by_lead(val.get('leads'))}, "
                    f"{state['throughput'][-1]['samples_per_s']} samples/s, "
                    f"data wait {100 * timing['data_wait_frac']:.1f}%"
                    + (" (best)" * (state["best_epoch"] == epoch + 1))
                )
            stop = context.agree(stop)
            if context.main:
                trainer.end_epoch(epoch, finished=stop or epoch + 1 == run["epochs"])
                runlog.epoch(trainer.state["history"], trainer.state["throughput"])
                if stop:
                    logger.info(f"early stop: no better validation loss for {run['patience']} epochs")
            if stop:
                break
        if context.main:
            runlog.finish()
            logger.info(
                f"{folder}: best epoch {trainer.state['best_epoch']} (val loss {trainer.state['best_val']:.5f})"
            )
    except BaseException:  # an MLflow run left active would switch off MLflow for the next run of this process
        if runlog:
            runlog.abort()
        raise
    return folder


def check_full_batch(loader, run: dict, store, world: int) -> None:
    """Refuse a train split too small for one full batch: the last partial batch is dropped, so the run would
    take no step and report a loss of 0 for untrained weights."""
    if len(loader) == 0:
        n = len(loader.dataset)
        share = f" ({n // world} per process, {world} processes)" if world > 1 else ""
        raise ConfigError(
            f"{store.path}: the train split has {n} samples{share}, fewer than batch_size "
            f"{run['batch_size']}: no full batch, so no training step; set batch_size to "
            f"{max(1, n // world)} or less, or give the train split more steps"
        )


def start_from(model: torch.nn.Module, init: dict) -> None:
    """Load the weights `init` (`checkpoint.initial_weights`) into `model`: fine-tuning, e.g. a rollout
    from a one-step run (`models.load_weights`)."""
    try:
        load_weights(model, load_checkpoint(Path(init["path"]))["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(
            f"init: the weights in {init['path']} do not fit this run's model (other channels, "
            f"leads or model settings?): {' '.join(line.strip() for line in first[:3])}"
        ) from None


def fit_baseline(
    model,
    run: dict,
    store,
    val_loader,
    weights: torch.Tensor,
    masks: TargetMasks,
    climatology,
    folder: Path,
    runlog: RunLog | None,
    context: DistributedContext,
) -> None:
    """Persistence needs nothing; climatology is fitted on the train split. Both are scored like a trained model."""
    if hasattr(model, "fit"):
        targets = val_loader.dataset.targets
        model.fit(store.array, store.split_indices("train"), store.time, targets, validity(store, targets))
    val = score(model, val_loader, store, weights, masks, climatology, context.world > 1)
    if runlog is None:
        return
    state = {"name": folder.name, "config": run, "model": model.state_dict(), "epoch": 0, "val": val}
    save_checkpoint(folder / "checkpoints" / "best.pt", state)
    save_checkpoint(folder / "checkpoints" / "last.pt", {**state, "finished": True})
    runlog.epoch([{"epoch": 0, "step": 0, "lr": 0.0, **epoch_scores(None, val)}], [])
    runlog.finish()
    logger.info(
        f"{folder}: {run['model']} val loss {val['loss']:.5f}, val RMSE {val['overall']['rmse']:.4f} std"
        + rmse_by_lead(val.get("leads"))
    )
