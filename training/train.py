"""The reference training loop behind `make train` and `make evaluate`.

    config = load_config("configs/default.yaml", {"model": "unet", "epochs": 5})
    folder = train(config, "data/intermediate/demo.zarr")      # runs/unet-demo-<hash>/
    evaluate(folder)                                            # scores/unet-demo-<hash>.json

Reproducible by construction: batch order is a function of (seed, epoch) (loaders.BatchSampler),
torch's global generator is reseeded from (seed, epoch) at every epoch, and a checkpoint holds all
other state, so a run resumed from any checkpoint, mid-epoch included, ends exactly where an
uninterrupted one would (on the CPU; CUDA kernels are not all deterministic). Under torchrun
(`make train NPROC=2`) each process trains on its own share of every epoch (DistributedDataParallel)
and the first one scores, checkpoints and logs.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from canonstore.errors import RunError
from canonstore.formats import open_store
from canonstore.formats.store import normalisation_scale
from canonstore.loaders.sampler import epoch_seed
from canonstore.training.checkpoint import load_checkpoint, save_checkpoint
from canonstore.training.config import TRAINED, resolve, run_name
from canonstore.training.data import make_loader
from canonstore.training.metrics import Scores, area_weights, weighted_mse
from canonstore.training.models import build_model, time_basis
from canonstore.training.tracking import RunLog, write_json


def pick_device(choice: str = "auto") -> torch.device:
    """cuda when asked for or (auto) when there is one, else cpu; under torchrun, this process's GPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RunError("device: cuda asked for, but torch sees no GPU (set device=cpu or device=auto)")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


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


# -- scoring -----------------------------------------------------------------------------------------
def forecast(model: torch.nn.Module, x: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """The model's prediction, in bf16 autocast on CUDA; the climatology also gets the time basis."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        return model(x, basis) if basis is not None else model(x)


@torch.inference_mode()
def score(model: torch.nn.Module, loader, store, weights: torch.Tensor) -> dict:
    """Scores of `model` on every sample of `loader` (in order): see training.metrics."""
    model.eval()
    dataset = loader.dataset
    core = getattr(model, "module", model)
    basis = None
    if getattr(core, "needs_time", False):  # the basis of each sample's valid time (t + lead)
        basis = torch.from_numpy(time_basis(store.time[dataset.times + dataset.lead], core.annual, core.diurnal))
    scores, start = Scores(weights), 0
    loader.set_epoch(0)
    for x, y in loader:
        b = None if basis is None else basis[start:start + x.shape[0]].to(x.device)
        scores.update(forecast(model, _layout(x), b).float(), y)
        start += x.shape[0]
    scale = normalisation_scale(store.stats["std"])[dataset.targets]
    units = [str(u) for u in store.to_xarray()["channel_units"].values[dataset.targets]]
    return scores.result(dataset.target_channels, scale, units)


def _layout(x: torch.Tensor) -> torch.Tensor:
    # channels_last: the layout tensor cores want for convolutions (a no-op on the CPU)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda and x.ndim == 4 else x


def _epoch_row(epoch: int, step: int, lr: float, train_loss: float | None, val: dict) -> dict:
    row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": train_loss, "val_loss": val["loss"]}
    row.update({f"val_{k}": val["overall"][k] for k in ("mae", "rmse", "r2")})
    for name, channel in val["channels"].items():
        row.update({f"val_{k}_{name}": channel[k] for k in ("mae", "rmse", "r2")})
    return row


# -- training ----------------------------------------------------------------------------------------
class _Processes:
    """This process's place under torchrun (rank, world size), or a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.main = self.rank == 0

    def total(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(value)
        return value

    def agree(self, flag: bool) -> bool:
        """The main process's decision, on every process."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)])
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())


def train(config: dict, store, runs_dir: str | Path = "runs", progress: bool = True, log=print,
          on_step=None) -> Path:
    """Train (or fit) `config["model"]` on `store`, resuming the run if it was interrupted.

    Returns the run's folder. A finished run is not trained again. `on_step(state)` is called after
    every optimizer step with {"epoch", "batch", "step"} (a hook for tests and custom logging).
    """
    store = open_store(store) if isinstance(store, (str, Path)) else store
    device = pick_device(config["device"])
    procs = _Processes(device)
    run = resolve(config, store, device.type, procs.world)
    name = run_name(run)
    folder = Path(runs_dir) / name
    last = folder / "checkpoints" / "last.pt"
    if last.exists() and load_checkpoint(last)["finished"]:
        log(f"{folder}: already trained (remove the folder to train it again)")
        return folder
    seed_everything(run["seed"])
    torch.backends.cudnn.benchmark = device.type == "cuda"
    train_loader = make_loader(run, store, "train", device, train=True, rank=procs.rank, world_size=procs.world)
    val_loader = make_loader(run, store, "val", device, train=False)
    dataset = train_loader.dataset
    model = build_model(run, dataset).to(device)
    weights = area_weights(store, dataset.targets, run["lat_weighted"]).to(device)
    runlog = RunLog(folder, name, run, log) if procs.main else None
    if runlog:
        runlog.write_config()
        log(f"{name}: {run['model']} on {store.path} ({len(dataset)} train samples, {device.type}, "
            f"loader {run['loader']}, {sum(p.numel() for p in model.parameters())} parameters)")
    if run["model"] not in TRAINED:
        _fit_baseline(model, run, store, dataset, val_loader, weights, folder, runlog, procs)
        return folder

    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=run["weight_decay"])
    steps_per_epoch = len(train_loader)
    total_steps = run["epochs"] * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, run["warmup"], run["scheduler"]))
    state = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "best_val": math.inf, "best_epoch": 0,
             "bad_epochs": 0, "history": [], "throughput": []}
    if last.exists():
        saved = load_checkpoint(last, device)
        if saved["name"] != name:
            raise RunError(f"{last}: belongs to run {saved['name']}, not {name}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state.update({k: saved[k] for k in state})
        log(f"{name}: resuming at epoch {state['epoch'] + 1}, batch {state['batch']} (step {state['step']})")
    trainable = model
    if procs.world > 1:
        trainable = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None else None)

    def checkpoint(path: Path, finished: bool = False, **extra) -> None:
        save_checkpoint(path, {"name": name, "config": run, "finished": finished, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               **state, **extra})

    for epoch in range(state["epoch"], run["epochs"]):
        torch.manual_seed(epoch_seed(run["seed"], epoch))  # any randomness in the model: f(seed, epoch)
        train_loader.set_epoch(epoch, start=state["batch"])
        trainable.train()
        # The epoch's loss sum goes on from a mid-epoch checkpoint's value: the same additions in the
        # same order, so a resumed run's train_loss is bit-identical to an uninterrupted one's.
        loss_sum = torch.tensor(state["loss_sum"], dtype=torch.float64, device=device)
        seen, wait, began = 0, 0.0, time.perf_counter()
        # disable=None: no bar when stderr is not a terminal (a log gets the line per epoch instead)
        bar = tqdm(total=steps_per_epoch, initial=state["batch"], disable=None if progress and procs.main else True,
                   desc=f"epoch {epoch + 1}/{run['epochs']}", unit="batch", leave=False)
        batches = iter(train_loader)
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - waited
            if batch is None:
                break
            x, y = batch
            loss = weighted_mse(forecast(trainable, _layout(x), None), y, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if run["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), run["grad_clip"])
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double()
            seen += x.shape[0]
            state["batch"] += 1
            state["step"] += 1
            bar.update()
            if state["batch"] % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / state['batch']:.4f}")
            if run["checkpoint_steps"] and state["step"] % run["checkpoint_steps"] == 0 \
                    and state["batch"] < steps_per_epoch:
                partial = procs.total(loss_sum.clone()).item() / procs.world  # mean over processes
                _check_finite(partial, epoch, folder)
                if procs.main:  # mid-epoch: the epoch's loss so far travels with it
                    checkpoint(last, loss_sum=partial)
            if on_step:
                on_step({"epoch": epoch, "batch": state["batch"], "step": state["step"]})
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
        train_loss = procs.total(loss_sum).item() / procs.world / max(1, state["batch"])
        _check_finite(train_loss, epoch, folder)
        stop = False
        if procs.main:
            val = score(model, val_loader, store, weights)
            state["history"].append(_epoch_row(epoch + 1, state["step"], scheduler.get_last_lr()[0], train_loss, val))
            state["throughput"].append({
                "epoch": epoch + 1, "samples": seen * procs.world, "seconds": round(seconds, 3),
                "samples_per_s": round(seen * procs.world / seconds, 1), "data_wait_frac": round(wait / seconds, 4),
                "loader": run["loader"], "workers": run["workers"], "device": str(device), "processes": procs.world,
                "resumed_mid_epoch": seen < steps_per_epoch * train_loader.sampler.batch_size})
            if val["loss"] < state["best_val"] - run["min_delta"]:
                state.update(best_val=val["loss"], best_epoch=epoch + 1, bad_epochs=0)
                save_checkpoint(folder / "checkpoints" / "best.pt",
                                {"name": name, "config": run, "model": model.state_dict(), "epoch": epoch + 1,
                                 "val": val})
            else:
                state["bad_epochs"] += 1
            stop = bool(run["patience"]) and state["bad_epochs"] >= run["patience"]
            log(f"epoch {epoch + 1}/{run['epochs']}: train loss {train_loss:.5f}, val loss {val['loss']:.5f}, "
                f"val RMSE {val['overall']['rmse']:.4f} std, {state['throughput'][-1]['samples_per_s']} samples/s, "
                f"data wait {100 * wait / seconds:.1f}%" + (" (best)" if state["best_epoch"] == epoch + 1 else ""))
        stop = procs.agree(stop)
        state.update(epoch=epoch + 1, batch=0, loss_sum=0.0)
        if procs.main:
            if run["checkpoint_every"] and (epoch + 1) % run["checkpoint_every"] == 0:
                checkpoint(folder / "checkpoints" / f"epoch-{epoch + 1:03d}.pt")
            checkpoint(last, finished=stop or epoch + 1 == run["epochs"])
            runlog.epoch(state["history"], state["throughput"])
        if stop:
            if procs.main:
                log(f"early stop: no better validation loss for {run['patience']} epochs (best: epoch {state['best_epoch']})")
            break
    if procs.main:
        runlog.finish()
        log(f"{folder}: best epoch {state['best_epoch']} (val loss {state['best_val']:.5f})")
    return folder


def _check_finite(loss: float, epoch: int, folder: Path) -> None:
    """Stop before a diverged model is checkpointed: resuming would only go on from NaN weights."""
    if not math.isfinite(loss):
        raise RunError(f"{folder.name}: the training loss became {loss} in epoch {epoch + 1} (learning rate too high?); "
                       f"{folder / 'checkpoints' / 'last.pt'} still holds the last finite state")


def _fit_baseline(model, run, store, dataset, val_loader, weights, folder, runlog, procs) -> None:
    """Persistence needs nothing; climatology is fitted on the train split. Both are scored like a trained model."""
    if not procs.main:
        return
    if hasattr(model, "fit"):
        steps = store.split_indices("train")
        model.fit(store.array, steps, store.time, dataset.targets)
    val = score(model, val_loader, store, weights)
    state = {"name": run_name(run), "config": run, "model": model.state_dict(), "epoch": 0, "val": val}
    save_checkpoint(folder / "checkpoints" / "best.pt", state)
    save_checkpoint(folder / "checkpoints" / "last.pt", {**state, "finished": True})
    runlog.epoch([_epoch_row(0, 0, 0.0, None, val)], [])
    runlog.finish()
    runlog.log(f"{folder}: {run['model']} val loss {val['loss']:.5f}, val RMSE {val['overall']['rmse']:.4f} std")


# -- evaluation --------------------------------------------------------------------------------------
def evaluate(folder: str | Path, scores_dir: str | Path = "scores", split: str = "test",
             checkpoint: str = "best", store=None, log=print) -> Path:
    """Score run `folder`'s `checkpoint` on `split`; writes scores/<run-name>.json (test) or
    scores/<run-name>-<split>.json, and returns its path.

    `store` defaults to the path the run was trained on; a different path must hold the same build.
    """
    from canonstore.formats.manifest import store_identity
    from canonstore.training.tracking import read_config

    folder = Path(folder)
    run = read_config(folder)
    store = open_store(store or run["store"]["path"]) if not hasattr(store, "array") else store
    if store_identity(store.path) != run["store"]["build"]:
        raise RunError(f"{store.path} is not the build run {folder.name} was trained on "
                       f"(it was rebuilt since?): train again with `make train`")
    path = folder / "checkpoints" / f"{checkpoint}.pt"
    if not path.exists():
        raise RunError(f"{path} does not exist: train the run first (make train MODEL={run['model']})")
    device = pick_device(run["device"] if run["device"] == "cpu" else "auto")
    saved = load_checkpoint(path, device)
    loader = make_loader(run, store, split, device, train=False)
    model = build_model(run, loader.dataset).to(device)
    model.load_state_dict(saved["model"])
    weights = area_weights(store, loader.dataset.targets, run["lat_weighted"]).to(device)
    result = score(model, loader, store, weights)
    out = Path(scores_dir) / (f"{folder.name}.json" if split == "test" else f"{folder.name}-{split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"run": folder.name, "model": run["model"], "split": split, "checkpoint": checkpoint,
                     "epoch": saved["epoch"], "store": run["store"], "scores": result, "config": run,
                     "evaluated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    log(f"{out}: {run['model']} on {split}: RMSE {result['overall']['rmse']:.4f} std, "
        f"MAE {result['overall']['mae']:.4f} std, R² {result['overall']['r2']:.4f} ({result['samples']} samples)")
    return out
