"""One trained model's optimisation, an epoch at a time: optimizer, learning-rate schedule, steps,
validation bookkeeping, early stopping and checkpoints (`training.train` drives it).

The state that decides what comes next (epoch, batch, step, the epoch's loss so far, the best
validation loss, the history of metrics) is `Trainer.state`, saved whole in every checkpoint: a run
resumed from any checkpoint, mid-epoch included, ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from canonstore._progress import progress as progress_bar
from canonstore.errors import RunError
from canonstore.loaders.patches import crop
from canonstore.loaders.sampler import epoch_seed
from canonstore.training.checkpoint import load_checkpoint, save_checkpoint
from canonstore.training.distributed import DistributedContext
from canonstore.training.metrics import TargetMasks, weighted_mse
from canonstore.training.scoring import forecast, to_layout

logger = logging.getLogger(__name__)


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


class Trainer:
    """A trained model's optimizer, schedule and progress (`state`), one epoch at a time, and its checkpoints."""

    def __init__(
        self,
        run: dict,
        folder: Path,
        model: torch.nn.Module,
        loader,
        weights: torch.Tensor,
        masks: TargetMasks,
        context: DistributedContext,
    ):
        self.run, self.folder, self.model, self.loader, self.weights = run, folder, model, loader, weights
        self.masks = masks
        self.context = context
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
        if context.world > 1:
            self.trainable = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=None if self.device.index is None else [self.device.index]
            )

    def resume(self, path: Path) -> None:
        saved = load_checkpoint(path, self.device)
        if saved["name"] != self.folder.name:
            raise RunError(f"{path}: belongs to run {saved['name']}, not {self.folder.name}")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state.update({k: saved[k] for k in self.state})
        logger.info(
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
        # off a terminal: a plain line now and then (canonstore._progress), never a redraw per batch
        bar = progress_bar(
            len(self.loader),
            f"epoch {epoch + 1}/{run['epochs']}",
            unit="batch",
            enabled=progress,
            initial=state["batch"],
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
            seen += batch[0].shape[0] // max(1, (run["blocks"] or {}).get("per_epoch", 0))  # samples, not patches
            state["batch"] += 1
            state["step"] += 1
            bar.update()
            if state["batch"] % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / state['batch']:.4f}", refresh=False)  # shown at the next draw
            every = run["checkpoint_steps"]
            if every and state["step"] % every == 0 and state["batch"] < len(self.loader):
                partial = self.context.mean(loss_sum)
                check_finite(partial, epoch, self.folder)
                if self.context.main:  # mid-epoch: the epoch's loss so far travels with it
                    self.save("last.pt", loss_sum=partial)
            if on_step:
                on_step({"epoch": epoch, "batch": state["batch"], "step": state["step"]})
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - began
        train_loss = self.context.mean(loss_sum) / max(1, state["batch"])
        check_finite(train_loss, epoch, self.folder)
        samples = seen * self.context.world
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
                "processes": self.context.world,
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


SCORE_COLUMNS = ("rmse", "rmse_sqrt_before_time_avg", "mae", "r2", "acc")


def epoch_scores(train_loss: float | None, val: dict) -> dict:
    """metrics.csv's columns for one epoch: losses, then validation scores overall and per channel."""
    row = {"train_loss": train_loss, "val_loss": val["loss"]}
    row.update({f"val_{k}": val["overall"][k] for k in SCORE_COLUMNS})
    for name, channel in val["channels"].items():
        row.update({f"val_{k}_{name}": channel[k] for k in SCORE_COLUMNS})
    return row


def check_finite(loss: float, epoch: int, folder: Path) -> None:
    """Stop before a diverged model is checkpointed: resuming would only go on from NaN weights."""
    if not math.isfinite(loss):
        raise RunError(
            f"{folder.name}: the training loss became {loss} in epoch {epoch + 1} (learning rate too "
            f"high?); {folder / 'checkpoints' / 'last.pt'} still holds the last finite state"
        )
