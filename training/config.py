"""Training configs: defaults <- a YAML file <- command-line overrides, each key checked by its parser.

    config = load_config("configs/default.yaml", {"model": "unet", "epochs": 5})
    parse_overrides(["epochs=5", "unet.width=32"])     # {"epochs": 5, "unet": {"width": 32}}

A config checked here becomes a run when resolved against a store (`training.runs`). Nothing here
imports torch: the keys are checked with the loaders' torch-free index arithmetic (`loaders.windows`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from canonstore.errors import ConfigError
from canonstore.loaders.windows import ENCODINGS, as_leads

MODELS = ("unet", "mlp", "persistence", "climatology", "coarse-up")
TRAINED = ("unet", "mlp")  # the others are fitted in one pass (climatology) or not at all (persistence)

# The defaults of every key; configs/default.yaml repeats them, to edit (a test keeps the two equal), and
# README's "Training config" table is generated from them (training/config_reference.py).
DEFAULTS: dict = {
    "model": "unet",
    "task": "forecast",  # forecast | downscaling (inputs: coarse-up fields; target: the residual)
    "coarse": None,  # downscaling: the coarse grid [h, w], or one factor for both axes
    "loader": "store",  # store | netcdf (the raw-file baseline, for speed comparisons)
    "lead": 1,  # target = step t + lead; a list [1, 2, 4] stacks the targets at each lead
    "rollout": 1,  # K > 1: the model's forecast is fed back K times (targets t + lead .. t + K lead)
    "history": 0,  # extra past steps stacked as input channels
    "channels": None,  # input channel names (None: all)
    "targets": None,  # target channel names (None: the input channels)
    "static": True,  # append the store's static fields to the inputs (or a list of names)
    "encodings": [],  # latlon, doy, hod, toa: positional and temporal inputs (loaders.encodings)
    # train on random patches (loaders.patches): {size: [h, w], per_epoch: s} (s = 0: one per sample per batch)
    "blocks": None,
    "lat_weighted": True,  # weight loss and metrics by cell area (WeatherBench 2's latitude weights)
    "batch_size": 32,
    "seed": 0,
    "workers": 2,  # gather threads (store) or DataLoader workers (netcdf)
    "device": "auto",  # auto | cpu | cuda
    # training (unet, mlp)
    "residual": True,  # predict the change from the input at t (targets must be inputs)
    "init": None,  # start from another run's weights: its folder (best.pt) or a checkpoint file
    "epochs": 6,
    "lr": 2.0e-3,
    "weight_decay": 0.01,
    "scheduler": "cosine",  # cosine | linear | constant, after a linear warm-up
    "warmup": 0.05,  # fraction of all steps spent warming up
    "grad_clip": 1.0,  # max gradient norm (0: off)
    "patience": 3,  # epochs without a better validation loss before stopping
    "min_delta": 0.0,  # improvement smaller than this does not count
    "checkpoint_every": 2,  # keep epoch-<n>.pt every N epochs (0: only best and last)
    "checkpoint_steps": 100,  # also save last.pt every N steps, for resuming mid-epoch (0: off)
    # per-model settings: only the chosen model's section is part of the run
    "unet": {"width": 16, "depth": 3},
    "mlp": {"width": 128, "layers": 2},
    "persistence": {},
    "coarse-up": {},
    "climatology": {"annual_harmonics": 3, "diurnal_harmonics": 2},
}
CHOICES = {
    "task": ("forecast", "downscaling"),
    "model": MODELS,
    "loader": ("store", "netcdf"),
    "scheduler": ("cosine", "linear", "constant"),
    "device": ("auto", "cpu", "cuda"),
}
# What only a trained model (unet, mlp) has: left out of the other models' runs.
TRAINING_KEYS = ("residual", "init", "epochs", "lr", "weight_decay", "scheduler", "warmup", "grad_clip", "patience")
TRAINING_KEYS += ("min_delta", "checkpoint_every", "checkpoint_steps")
# Change how fast a run goes, never what it computes: left out of the run's hash, so that a run
# can be resumed with other values.
EXECUTION_KEYS = ("workers", "checkpoint_every", "checkpoint_steps")


class _Expected(ValueError):
    """What a key's value should have been, in the words of its parser."""


def _one_of(choices: tuple[str, ...]):
    def parse(value):
        if value not in choices:
            raise _Expected(f"one of {list(choices)}")
        return value

    return parse


def _channel_names(value):
    if value is None:
        return None
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _Expected("a list of channel names, or null for all")
    return value


def _encodings(value):
    if not isinstance(value, list) or not all(v in ENCODINGS for v in value) or len(set(value)) != len(value):
        raise _Expected(f"a list of distinct encodings from {list(ENCODINGS)}")
    return value


def _lead(value):
    try:
        as_leads(value)
    except ValueError:
        raise _Expected("a step count >= 0, or a list of distinct ascending step counts like [1, 2, 4]") from None
    return value


def _rollout(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Expected("a whole number >= 1 (1: no rollout)")
    return value


def _init(value):
    if value is not None and not (isinstance(value, str) and value):
        raise _Expected("null or the path of a run folder or checkpoint")
    return value


def _coarse(value):
    if not (
        value is None
        or (isinstance(value, int) and not isinstance(value, bool) and value > 1)
        or (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value))
    ):
        raise _Expected("null, a whole factor > 1, or a coarse grid [h, w]")
    return value


def _patches(value):
    """The `blocks` key: random patches' size and how many per epoch, with per_epoch filled in."""
    if value is None:
        return None
    size = value.get("size") if isinstance(value, dict) else None
    per_epoch = value.get("per_epoch", 0) if isinstance(value, dict) else None
    if (
        not isinstance(value, dict)
        or set(value) - {"size", "per_epoch"}
        or not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        or not isinstance(per_epoch, int)
        or isinstance(per_epoch, bool)
        or per_epoch < 0
    ):
        raise _Expected("null or {size: [h, w], per_epoch: s} with whole h, w > 0 and s >= 0")
    return {"size": size, "per_epoch": per_epoch}


def _static(value):
    if isinstance(value, bool) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise _Expected("true, false or a list of static field names")


def _bool(value):
    if not isinstance(value, bool):
        raise _Expected("true or false")
    return value


def _whole(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Expected("a whole number >= 0")
    return value


def _number(value):
    try:  # YAML reads 1e-3 (no dot) as a string
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or number < 0:
        raise _Expected("a number >= 0")
    return number


# Each key's parser: its own, else the one for the type of its default (sections' keys: `unet.width`).
PARSERS = {
    **{key: _one_of(choices) for key, choices in CHOICES.items()},
    "channels": _channel_names,
    "targets": _channel_names,
    "encodings": _encodings,
    "lead": _lead,
    "rollout": _rollout,
    "init": _init,
    "coarse": _coarse,
    "blocks": _patches,
    "static": _static,
}
_BY_TYPE = {bool: _bool, int: _whole, float: _number}


def _check(key: str, value, default, source: str):
    """`value` as its parser returns it (e.g. a float for `lr: 1e-3`), or a ConfigError saying what was expected."""
    parse = PARSERS.get(key) or _BY_TYPE.get(type(default), lambda v: v)
    try:
        return parse(value)
    except _Expected as exc:
        raise ConfigError(f"{source}: key '{key}': expected {exc}, got {value!r}") from None


def parse_config(raw: dict, source: str) -> dict:
    """Check `raw` (a partial config) against DEFAULTS; returns a checked copy. Unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(raw).__name__}")
    checked = {}
    for key, value in raw.items():
        if key not in DEFAULTS:
            raise ConfigError(f"{source}: unknown key '{key}'; known keys: {sorted(DEFAULTS)}")
        default = DEFAULTS[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{key}': expected a mapping, got {value!r}")
            unknown = sorted(set(value) - set(default))
            if unknown:
                raise ConfigError(f"{source}: unknown key(s) {unknown} in '{key}'; known: {sorted(default)}")
            checked[key] = {k: _check(f"{key}.{k}", v, default[k], source) for k, v in value.items()}
        else:
            checked[key] = _check(key, value, default, source)
    return checked


def parse_overrides(pairs: list[str]) -> dict:
    """`["epochs=5", "unet.width=32"]` -> {"epochs": 5, "unet": {"width": 32}} (values read as YAML)."""
    overrides: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE, e.g. epochs=5 or unet.width=32")
        value = yaml.safe_load(text) if text else None
        section, _, inner = key.partition(".")
        if inner:
            overrides.setdefault(section, {})[inner] = value
        else:
            overrides[key] = value
    return overrides


def merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both else value
    return merged


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """DEFAULTS, updated by the YAML file at `path` (if any), then by `overrides`; all checked."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        config = merge(config, parse_config(raw, str(path)))
    if overrides:
        config = merge(config, parse_config(overrides, "command line"))
    return config


def lead_times(run: dict) -> list[int]:
    """The leads a run's targets are at: `lead` (one or a list), or lead, 2 lead, ..., K lead for rollout K."""
    lead, steps = run["lead"], run.get("rollout", 1)
    if steps > 1:
        return [lead * k for k in range(1, steps + 1)]
    return [lead] if isinstance(lead, int) else list(lead)
