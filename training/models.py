"""Which model a run trains or fits, built for a dataset's channels: the networks, the baselines, and the
wrappers that make a network residual or roll it out.

    model = build_model(run, dataset)      # run: a resolved config (training.runs)

unet and mlp (`training.nets`) predict the change from persistence when `residual` is set. With several
leads (`lead: [1, 2, 4]`) every model forecasts all of them at once, stacked along channels; with
`rollout: K` a trained model forecasts one lead and is run K times on its own output (`Rollout`).
persistence and climatology are in `training.baselines`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from canonstore.errors import ConfigError
from canonstore.training.baselines import Climatology, Persistence
from canonstore.training.nets import MLP, UNet


class Residual(nn.Module):
    """`net` predicts the change from persistence: forecast = input at t + net(inputs)."""

    def __init__(self, net: nn.Module, source: list[int]):
        super().__init__()
        self.net, self.persistence = net, Persistence(source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.persistence(x) + self.net(x)


class Rollout(nn.Module):
    """A one-step model run `steps` times on its own forecasts: from the inputs at t, the forecasts
    at t + stride, ..., t + steps x stride, stacked along channels.

    Each step's inputs are the previous ones moved on by one lead: the oldest history step drops out,
    the forecast of every dynamic input channel (`feed`: its position among the outputs) comes in as
    the newest, the static fields stay, and the encodings are computed for the new time, which is why
    such a model is called as model(x, steps=<each sample's store step t>) when it has encodings.
    Gradients flow through every step (the loss is averaged over them).
    """

    def __init__(self, net: nn.Module, steps: int, feed: list[int], history: int, stride: int, encodings=None):
        super().__init__()
        self.net, self.steps, self.history, self.stride, self.encodings = net, steps, history, stride, encodings
        self.register_buffer("feed", torch.tensor(feed, dtype=torch.long))
        self.needs_steps = encodings is not None

    def forward(self, x: torch.Tensor, steps: np.ndarray | None = None) -> torch.Tensor:
        if self.encodings is not None and steps is None:
            raise ValueError(
                "this rollout model has encodings: call it as model(x, steps=<store step t of each sample>)"
            )
        outputs = []
        for k in range(1, self.steps + 1):
            outputs.append(self.net(x))
            if k < self.steps:
                x = self._advance(x, outputs[-1], None if steps is None else np.asarray(steps) + k * self.stride)
        return torch.cat(outputs, dim=1)

    def _advance(self, x: torch.Tensor, forecast: torch.Tensor, steps) -> torch.Tensor:
        n = self.feed.numel()
        dynamic = (self.history + 1) * n
        encoded = len(self.encodings) if self.encodings is not None else 0
        parts = [x[:, n:dynamic], forecast[:, self.feed].to(x.dtype), x[:, dynamic : x.shape[1] - encoded]]
        if encoded:
            parts.append(self.encodings.fields(steps, x.device).to(x.dtype))
        return torch.cat(parts, dim=1)


def _sources(dataset) -> list[int]:
    """Positions among the inputs (at t) of each target channel."""
    inputs = dataset.input_channels
    missing = [name for name in dataset.target_channels if name not in inputs]
    if missing:
        raise ConfigError(
            f"persistence and residual models need every target among the inputs at t; "
            f"{missing} are not (inputs: {inputs})"
        )
    return [inputs.index(name) for name in dataset.target_channels]


def load_weights(model: nn.Module, state: dict) -> None:
    """Load a checkpoint's `state` into `model`. A rollout's weights are its one-step model's, so a
    rollout takes a one-step model's weights and the reverse (fine-tuning, other rollout lengths)."""
    if "feed" in state:  # saved by a rollout: its one-step model
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    (model.net if isinstance(model, Rollout) else model).load_state_dict(state)


def feed_of(dataset) -> list[int]:
    """Positions among the targets of each dynamic input channel: what a rollout feeds back."""
    targets = dataset.target_channels
    inputs = [dataset.store_channels[c] for c in dataset.channels]
    missing = [name for name in inputs if name not in targets]
    if missing:
        raise ConfigError(
            f"rollout feeds the model's forecast back as its next input, so every input channel must be "
            f"a target; {missing} are not (targets: {targets}): add them to `targets` or leave them "
            f"out of `channels`"
        )
    return [targets.index(name) for name in inputs]


def build_model(run: dict, dataset) -> nn.Module:
    """The model `run["model"]` for `dataset`'s inputs and targets (untrained; climatology unfitted).

    It forecasts every lead of `dataset.leads`, stacked along channels: at once, or (rollout) one
    lead at a time, fed back."""
    name, args = run["model"], run["model_args"]
    rollout = run.get("rollout", 1) if name in ("unet", "mlp") else 1
    leads = 1 if rollout > 1 else len(dataset.leads)  # the network's own output: one step, or all leads at once
    n_in, n_out, space = len(dataset.input_channels), len(dataset.target_channels), dataset.sample_space
    if name in ("persistence", "coarse-up"):  # coarse-up: downscaling's baseline, the inputs are coarse-upped
        return Persistence(_sources(dataset) * len(dataset.leads))
    if name == "climatology":
        return Climatology(n_out, space, args["annual_harmonics"], args["diurnal_harmonics"])
    if name == "unet":
        if len(space) != 2:
            raise ConfigError(f"unet needs (lat, lon) samples; this store's samples have shape {space} (try mlp)")
        smallest = 2 ** args["depth"]
        if min(space) < smallest:
            fits = int(np.log2(min(space)))
            hint = f"set unet.depth={fits} or less, or use mlp" if fits >= 1 else "use mlp"
            raise ConfigError(
                f"unet.depth={args['depth']} halves the grid {args['depth']} times and needs at least "
                f"{smallest} x {smallest} cells; this store's grid is {space[0]} x {space[1]}: {hint}"
            )
        net = UNet(n_in, n_out * leads, width=args["width"], depth=args["depth"], periodic=dataset.longitude_periodic)
    elif name == "mlp":
        net = MLP(n_in, n_out * leads, width=args["width"], layers=args["layers"])
    else:
        raise ConfigError(f"unknown model {name!r}; choose one of unet, mlp, persistence, climatology")
    model = Residual(net, _sources(dataset) * leads) if run["residual"] else net
    if rollout > 1:
        model = Rollout(model, rollout, feed_of(dataset), dataset.history, dataset.leads[0], dataset.encodings)
    return model
