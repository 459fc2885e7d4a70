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

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from canonstore.errors import ConfigError, RunError, StoreError
from canonstore.formats import open_store
from canonstore.loaders.patches import crop
from canonstore.loaders.sampler import epoch_seed
from canonstore.training.checkpoint import load_checkpoint, save_checkpoint
from canonstore.training.config import TRAINED, resolve, run_name
from canonstore.training.data import make_loader, pick_device
from canonstore.training.evaluate import forecast, rmse_by_lead, score, to_layout
from canonstore.training.metrics import TargetMasks, area_weights, validity, weighted_mse
from canonstore.training.models import build_model, load_weights, reference_climatology
from canonstore.training.tracking import RunLog


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the loaders seed their own generators from the config's seed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, warmup: float, kind: str) -> float:
    """Learning-rate multiplier at `step` of `total`: linear warm-up, then cosine/linear decay to 0 or constant."""
    warm = int(warmup * total)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if kind == "linear":
        return max(0.0, 1 - progress)
    return 1.0


def run_folder(config: dict, store, runs_dir: str | Path = "runs") -> Path:
    """Where the run `config` on `store` lives: runs/<model>-<store>-<hash>."""
    store = open_store(store) if isinstance(store, (str, Path)) else store
    world = int(os.environ.get("WORLD_SIZE", 1))
    return Path(runs_dir) / run_name(resolve(config, store, pick_device(config["device"]).type, world))


class _Processes:
    """This process's place under torchrun (rank, world size), or a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        # NCCL takes CUDA tensors only (gloo takes CPU ones): every collective below uses this device.
        self.device = device
        if self.world > 1 and not torch.distributed.is_initialized():
            # NCCL refuses two ranks on one GPU; gloo runs the same collectives on CUDA tensors.
            shared = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > max(1, torch.cuda.device_count())
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" and not shared else "gloo")
        self.main = self.rank == 0

    def mean(self, value: torch.Tensor) -> float:
        """The mean of `value` over the processes."""
        if self.world > 1:
            value = value.to(self.device, copy=True)
            torch.distributed.all_reduce(value)
        return value.item() / self.world

    def agree(self, flag: bool) -> bool:
        """The main process's decision, on every process."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())


def train(config: dict, store, runs_dir: str | Path = "runs", progress: bool = True, log=print, on_step=None) -> Path:
    """Train (or fit) `config["model"]` on `store`, resuming the run if it was interrupted.

    Returns the run's folder. A finished run is not trained again. `on_step(state)` is called after
    every optimizer step with {"epoch", "batch", "step"} (a hook for tests and custom logging).
    """
    store = open_store(store) if isinstance(store, (str, Path)) else store
    device = pick_device(config["device"])
    procs = _Processes(device)
    run = resolve(config, store, device.type, procs.world)
    folder = Path(runs_dir) / run_name(run)
    last = folder / "checkpoints" / "last.pt"
    if last.exists() and load_checkpoint(last)["finished"]:
        log(f"{folder}: already trained (remove the folder to train it again)")
        return folder
    seed_everything(run["seed"])
    torch.backends.cudnn.benchmark = device.type == "cuda"
    train_loader = make_loader(run, store, "train", device, train=True, rank=procs.rank, world_size=procs.world)
    if run["model"] in TRAINED:
        check_full_batch(train_loader, run, store, procs.world)
    try:
        val_loader = make_loader(run, store, "val", device, train=False, rank=procs.rank, world_size=procs.world)
    except StoreError as exc:
        raise StoreError(
            f"{exc}: training picks its best epoch on the val split and needs a window there; give "
            "the recipe's `splits` a (longer) val range, or use a shorter history or lead"
        ) from None
    model = build_model(run, train_loader.dataset).to(device)
    if run.get("init") and not last.exists():  # before anything is written: weights that do not fit leave no run
        start_from(model, run["init"], log if procs.main else (lambda *_: None))
    weights = area_weights(store, train_loader.dataset.targets, run["lat_weighted"]).to(device)
    masks = TargetMasks(store, train_loader.dataset)
    climatology = reference_climatology(store, train_loader.dataset.targets).to(device)
    runlog = RunLog(folder, folder.name, run, log) if procs.main else None
    if runlog:
        for warning in run["warnings"]:
            log(f"warning: {warning}")
        runlog.write_config()
        log(
            f"{folder.name}: {run['model']} on {store.path} ({len(train_loader.dataset)} train samples, "
            f"{device.type}, loader {run['loader']}, {sum(p.numel() for p in model.parameters())} parameters)"
        )
    if run["model"] not in TRAINED:
        _fit_baseline(model, run, store, val_loader, weights, masks, climatology, folder, runlog, procs)
        return folder

    trainer = _Trainer(run, folder, model, train_loader, weights, masks, procs)
    if last.exists():
        trainer.resume(last, log)
    for epoch in range(trainer.state["epoch"], run["epochs"]):
        train_loss, timing = trainer.train_epoch(epoch, progress and procs.main, on_step)
        stop = False
        val = score(model, val_loader, store, weights, masks, climatology, procs.world > 1)
        if procs.main:
            stop = trainer.record_epoch(epoch, train_loss, val, timing)
            state = trainer.state
            log(
                f"epoch {epoch + 1}/{run['epochs']}: train loss {train_loss:.5f}, val loss {val['loss']:.5f}, "
                f"val RMSE {val['overall']['rmse']:.4f} std{rmse_by_lead(val.get('leads'))}, "
                f"{state['throughput'][-1]['samples_per_s']} samples/s, "
                f"data wait {100 * timing['data_wait_frac']:.1f}%" + (" (best)" * (state["best_epoch"] == epoch + 1))
            )
        stop = procs.agree(stop)
        if procs.main:
            trainer.end_epoch(epoch, finished=stop or epoch + 1 == run["epochs"])
            runlog.epoch(trainer.state["history"], trainer.state["throughput"])
            if stop:
                log(f"early stop: no better validation loss for {run['patience']} epochs")
        if stop:
            break
    if procs.main:
        runlog.finish()
        log(f"{folder}: best epoch {trainer.state['best_epoch']} (val loss {trainer.state['best_val']:.5f})")
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


def start_from(model: torch.nn.Module, init: dict, log=print) -> None:
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
    log(f"starting from the weights of {init['run']} ({init['path']})")


class _Trainer:
    """A trained model's optimizer, schedule and progress (`state`), one epoch at a time, and its checkpoints."""

    def __init__(
        self, run: dict, folder: Path, model: torch.nn.Module, loader, weights: torch.Tensor, masks: TargetMasks, procs
    ):
        self.run, self.folder, self.model, self.loader, self.weights = run, folder, model, loader, weights
        self.masks = masks
        self.procs = procs
        self.device = weights.device
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=run["weight_decay"])
        total = run["epochs"] * len(loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total, run["warmup"], run["scheduler"])
        )
        self.state = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "loss_sum": 0.0,
            "best_val": math.inf,
            "best_epoch": 0,
            "bad_epochs": 0,
            "history": [],
            "throughput": [],
        }
        self.trainable = model
        if procs.world > 1:
            self.trainable = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=None if self.device.index is None else [self.device.index]
            )

    def resume(self, path: Path, log) -> None:
        saved = load_checkpoint(path, self.device)
        if saved["name"] != self.folder.name:
            raise RunError(f"{path}: belongs to run {saved['name']}, not {self.folder.name}")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state.update({k: saved[k] for k in self.state})
        log(
            f"{self.folder.name}: resuming at epoch {self.state['epoch'] + 1}, batch {self.state['batch']} "
            f"(step {self.state['step']})"
        )

    def save(self, name: str, **extra) -> None:
        save_checkpoint(
            self.folder / "checkpoints" / name,
            {
                "name": self.folder.name,
                "config": self.run,
                "finished": False,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                **self.state,
                **extra,
            },
        )

    def train_epoch(self, epoch: int, progress: bool, on_step) -> tuple[float, dict]:
        """One pass over the train split (from `state["batch"]` on); returns the mean loss and timings."""
        run, state = self.run, self.state
        torch.manual_seed(epoch_seed(run["seed"], epoch, "model"))  # any randomness in the model: f(seed, epoch)
        self.loader.set_epoch(epoch, start=state["batch"])
        self.trainable.train()
        # The epoch's loss sum goes on from a mid-epoch checkpoint's value: the same additions in the
        # same order, so a resumed run's train_loss is bit-identical to an uninterrupted one's.
        loss_sum = torch.tensor(state["loss_sum"], dtype=torch.float64, device=self.device)
        seen, wait, began = 0, 0.0, time.perf_counter()
        # disable=None: no bar when stderr is not a terminal (a log gets the line per epoch instead)
        bar = tqdm(
            total=len(self.loader),
            initial=state["batch"],
            disable=None if progress else True,
            desc=f"epoch {epoch + 1}/{run['epochs']}",
            unit="batch",
            leave=False,
        )
        batches = iter(self.loader)
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - waited
            if batch is None:
                break
            loss_sum += self._step(*batch).double()
            seen += batch[0].shape[0] // max(1, (run["blocks"] or {}).get("per_epoch", 0))  # samples, not blocks
            state["batch"] += 1
            state["step"] += 1
            bar.update()
            if state["batch"] % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / state['batch']:.4f}")
            every = run["checkpoint_steps"]
            if every and state["step"] % every == 0 and state["batch"] < len(self.loader):
                partial = self.procs.mean(loss_sum)
                _check_finite(partial, epoch, self.folder)
                if self.procs.main:  # mid-epoch: the epoch's loss so far travels with it
                    self.save("last.pt", loss_sum=partial)
            if on_step:
                on_step({"epoch": epoch, "batch": state["batch"], "step": state["step"]})
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - began
        train_loss = self.procs.mean(loss_sum) / max(1, state["batch"])
        _check_finite(train_loss, epoch, self.folder)
        samples = seen * self.procs.world
        return train_loss, {
            "samples": samples,
            "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1),
            "data_wait_frac": round(wait / seconds, 4),
            "resumed_mid_epoch": seen < len(self.loader) * self.loader.sampler.batch_size,
        }

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y, valid = self.masks.split(y)  # filled points weigh 0
        weights = self.weights
        if getattr(self.loader, "patch_size", None) is not None:  # the area weights of the patches just cut
            _, rows, cols = self.loader.last_patches
            weights = crop(weights[None], rows, cols, torch.zeros(rows.shape[0], dtype=torch.long))
        loss = weighted_mse(forecast(self.trainable, to_layout(x), steps=self.loader.last_steps), y, weights, valid)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.run["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run["grad_clip"])
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def record_epoch(self, epoch: int, train_loss: float, val: dict, timing: dict) -> bool:
        """Add the epoch's metrics and timings, keep best.pt; True when early stopping says stop."""
        run, state = self.run, self.state
        lr = self.scheduler.get_last_lr()[0]
        state["history"].append({"epoch": epoch + 1, "step": state["step"], "lr": lr, **epoch_scores(train_loss, val)})
        state["throughput"].append(
            {
                "epoch": epoch + 1,
                **timing,
                "loader": run["loader"],
                "workers": run["workers"],
                "device": str(self.device),
                "processes": self.procs.world,
            }
        )
        if val["loss"] < state["best_val"] - run["min_delta"]:
            state.update(best_val=val["loss"], best_epoch=epoch + 1, bad_epochs=0)
            save_checkpoint(
                self.folder / "checkpoints" / "best.pt",
                {
                    "name": self.folder.name,
                    "config": run,
                    "model": self.model.state_dict(),
                    "epoch": epoch + 1,
                    "val": val,
                },
            )
        else:
            state["bad_epochs"] += 1
        return bool(run["patience"]) and state["bad_epochs"] >= run["patience"]

    def end_epoch(self, epoch: int, finished: bool) -> None:
        self.state.update(epoch=epoch + 1, batch=0, loss_sum=0.0)
        if self.run["checkpoint_every"] and (epoch + 1) % self.run["checkpoint_every"] == 0:
            self.save(f"epoch-{epoch + 1:03d}.pt")
        self.save("last.pt", finished=finished)


SCORE_COLUMNS = ("mae", "rmse", "rmse_pooled", "r2", "acc")


def epoch_scores(train_loss: float | None, val: dict) -> dict:
    """metrics.csv's columns for one epoch: losses, then validation scores overall and per channel."""
    row = {"train_loss": train_loss, "val_loss": val["loss"]}
    row.update({f"val_{k}": val["overall"][k] for k in SCORE_COLUMNS})
    for name, channel in val["channels"].items():
        row.update({f"val_{k}_{name}": channel[k] for k in SCORE_COLUMNS})
    return row


def _check_finite(loss: float, epoch: int, folder: Path) -> None:
    """Stop before a diverged model is checkpointed: resuming would only go on from NaN weights."""
    if not math.isfinite(loss):
        raise RunError(
            f"{folder.name}: the training loss became {loss} in epoch {epoch + 1} (learning rate too "
            f"high?); {folder / 'checkpoints' / 'last.pt'} still holds the last finite state"
        )


def _fit_baseline(
    model,
    run: dict,
    store,
    val_loader,
    weights: torch.Tensor,
    masks: TargetMasks,
    climatology,
    folder: Path,
    runlog: RunLog | None,
    procs: _Processes,
) -> None:
    """Persistence needs nothing; climatology is fitted on the train split. Both are scored like a trained model."""
    if hasattr(model, "fit"):
        if (model.annual, model.diurnal) == (climatology.annual, climatology.diurnal):
            model.coef.copy_(climatology.coef)  # the ACC's reference is this very fit: no second pass
        else:
            targets = val_loader.dataset.targets
            model.fit(store.array, store.split_indices("train"), store.time, targets, validity(store, targets))
    val = score(model, val_loader, store, weights, masks, climatology, procs.world > 1)
    if runlog is None:
        return
    state = {"name": folder.name, "config": run, "model": model.state_dict(), "epoch": 0, "val": val}
    save_checkpoint(folder / "checkpoints" / "best.pt", state)
    save_checkpoint(folder / "checkpoints" / "last.pt", {**state, "finished": True})
    runlog.epoch([{"epoch": 0, "step": 0, "lr": 0.0, **epoch_scores(None, val)}], [])
    runlog.finish()
    runlog.log(
        f"{folder}: {run['model']} val loss {val['loss']:.5f}, val RMSE {val['overall']['rmse']:.4f} std"
        + rmse_by_lead(val.get("leads"))
    )
