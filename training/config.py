"""Training configs: defaults <- a YAML file <- command-line overrides, checked, then named.

    config = load_config("configs/default.yaml", {"model": "unet", "epochs": 5})
    run_name(resolve(config, store, "cpu"))      # 'unet-demo-3f9a1c2e'

A run's name is its model, its store and a short hash of everything that decides its result
(the resolved config and the store's build), so two different runs never share a folder and the
same command twice finds the same run (and resumes or skips it).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

from canonstore._time import is_dates
from canonstore.errors import ConfigError

MODELS = ("unet", "mlp", "persistence", "climatology", "coarse-up")
TRAINED = ("unet", "mlp")  # the others are fitted in one pass (climatology) or not at all (persistence)

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
    "blocks": None,  # train on random blocks: {size: [h, w], per_epoch: s} (s = 0: one per sample per batch)
    "lat_weighted": True,  # weight loss and metrics by cell area (cos latitude)
    "batch_size": 32,
    "seed": 0,
    "workers": 2,  # gather threads (store) or DataLoader workers (netcdf)
    "device": "auto",  # auto | cpu | cuda
    # training (unet, mlp)
    "residual": True,  # predict the change from the input at t (targets must be inputs)
    "init": None,  # start from another run's weights: its folder (best.pt) or a checkpoint file
    "epochs": 5,
    "lr": 1.0e-3,
    "weight_decay": 0.01,
    "scheduler": "cosine",  # cosine | linear | constant, after a linear warm-up
    "warmup": 0.05,  # fraction of all steps spent warming up
    "grad_clip": 1.0,  # max gradient norm (0: off)
    "patience": 3,  # epochs without a better validation loss before stopping
    "min_delta": 0.0,  # improvement smaller than this does not count
    "checkpoint_every": 1,  # keep epoch-<n>.pt every N epochs (0: only best and last)
    "checkpoint_steps": 200,  # also save last.pt every N steps, for resuming mid-epoch (0: off)
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
TRAINING_KEYS = (
    "residual",
    "init",
    "epochs",
    "lr",
    "weight_decay",
    "scheduler",
    "warmup",
    "grad_clip",
    "patience",
    "min_delta",
    "checkpoint_every",
    "checkpoint_steps",
)
# Change how fast a run goes, never what it computes: left out of the run's hash, so that a run
# can be resumed with other values.
EXECUTION_KEYS = ("workers", "checkpoint_every", "checkpoint_steps")


def _check(key: str, value, default, source: str):
    """`value` converted to the type of `default`, or a ConfigError saying what was expected."""

    def fail(expected: str):
        raise ConfigError(f"{source}: key '{key}': expected {expected}, got {value!r}")

    if key in CHOICES:
        if value not in CHOICES[key]:
            fail(f"one of {list(CHOICES[key])}")
        return value
    if key in ("channels", "targets"):
        if value is None:
            return None
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            fail("a list of channel names, or null for all")
        return value
    if key == "encodings":
        from canonstore.loaders.windows import ENCODINGS

        if not isinstance(value, list) or not all(v in ENCODINGS for v in value) or len(set(value)) != len(value):
            fail(f"a list of distinct encodings from {list(ENCODINGS)}")
        return value
    if key == "lead":
        from canonstore.loaders.windows import as_leads

        try:
            as_leads(value)
        except ValueError:
            fail("a step count >= 0, or a list of distinct ascending step counts like [1, 2, 4]")
        return value
    if key == "rollout":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail("a whole number >= 1 (1: no rollout)")
        return value
    if key == "init":
        if value is not None and not (isinstance(value, str) and value):
            fail("null or the path of a run folder or checkpoint")
        return value
    if key == "coarse":
        ok = (
            value is None
            or (isinstance(value, int) and not isinstance(value, bool) and value > 1)
            or (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value))
        )
        if not ok:
            fail("null, a whole factor > 1, or a coarse grid [h, w]")
        return value
    if key == "blocks":
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
            fail("null or {size: [h, w], per_epoch: s} with whole h, w > 0 and s >= 0")
        return {"size": size, "per_epoch": per_epoch}
    if key == "static":
        if isinstance(value, bool) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value
        fail("true, false or a list of static field names")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail("a whole number >= 0")
        return value
    if isinstance(default, float):
        try:  # YAML reads 1e-3 (no dot) as a string
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if isinstance(value, bool) or number is None or number < 0:
            fail("a number >= 0")
        return number
    return value


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


def resolve(config: dict, store, device: str, world_size: int = 1) -> dict:
    """The run's full description: the config with only the chosen model's section, the device
    type, the number of processes, and the store (its name and which build it is)."""
    model = config["model"]
    run = {k: v for k, v in config.items() if k not in MODELS and (model in TRAINED or k not in TRAINING_KEYS)}
    run["model_args"] = dict(config[model])
    if config["task"] == "downscaling":
        if config["coarse"] is None:
            raise ConfigError("task: downscaling needs `coarse`: the coarse grid [h, w] or a factor, e.g. coarse=4")
        if config["rollout"] > 1:
            raise ConfigError("rollout feeds forecasts back as inputs; task: downscaling has no next step to feed")
        run["lead"], run["history"] = 0, 0  # the target is the high-resolution field at the input time
    elif model == "coarse-up":
        raise ConfigError("model coarse-up is the downscaling baseline (predict R = 0): set task=downscaling")
    if config["rollout"] > 1:
        if not isinstance(config["lead"], int) or config["lead"] < 1:
            raise ConfigError(
                f"rollout: {config['rollout']} steps the model by one lead at a time; set lead to "
                f"one step count >= 1, not {config['lead']!r}"
            )
        if config["blocks"]:
            raise ConfigError(
                "rollout feeds whole forecast fields back as inputs; it cannot train on random blocks: set blocks=null"
            )
        check_rollout_history(f"rollout: {config['rollout']}", config["history"], config["lead"])
    if config["task"] == "forecast" and 0 in ([config["lead"]] if isinstance(config["lead"], int) else config["lead"]):
        raise ConfigError(
            f"lead: {config['lead']!r} with task: forecast trains the identity map (the target at "
            "lead 0 is the input at t): set lead to step counts >= 1 (lead 0 is for task: downscaling)"
        )
    if run.get("init"):
        from canonstore.training.checkpoint import initial_weights

        run["init"] = initial_weights(run["init"])
    run["device"] = device
    run["world_size"] = world_size
    run["store"] = {"name": store.attrs["name"], "path": str(store.path), "build": store.build_id}
    run["warnings"] = []
    if config["lat_weighted"]:
        from canonstore.training.metrics import lat_weighting

        cos_lat, how = lat_weighting(store)
        run["lat_weighting"] = how
        if cos_lat is None:  # said out loud and kept with the run, never a silent weight of 1
            run["warnings"].append(f"lat_weighted is true but {store.path} gets no area weighting: {how}")
    else:
        run["lat_weighting"] = "none: lat_weighted is false"
    if model == "climatology":
        _supported_climatology(run, store)
    return run


def _supported_climatology(run: dict, store) -> None:
    """Fit only the harmonics the train split supports (`models.supported_harmonics`), and say so: a
    store shorter than a year gets no annual harmonics rather than a fit extrapolated over the year."""
    from canonstore.training.models import supported_harmonics

    args = run["model_args"]
    train = store.time[store.split_indices("train")]
    if not (args["annual_harmonics"] or args["diurnal_harmonics"]) or not is_dates(train):
        return  # no dates: the fit says what to set (training.models.time_phases)
    args["annual_harmonics"], args["diurnal_harmonics"], why = supported_harmonics(
        train, args["annual_harmonics"], args["diurnal_harmonics"]
    )
    run["warnings"] += [f"climatology: {reason}" for reason in why]


def check_rollout_history(what: str, history: int, lead) -> None:
    """Refuse a rollout whose history steps would be spaced unlike training: after its first step the
    model's inputs are its forecasts, `lead` steps apart, where it learned from consecutive steps."""
    if history > 0 and isinstance(lead, int) and lead > 1:
        raise ConfigError(
            f"{what} with history: {history} and lead: {lead} would feed the model inputs {lead} "
            "steps apart after its first step, though it was trained on consecutive history steps: "
            "set lead=1 or history=0, or forecast one lead at a time (rollout=1, --steps 1)"
        )


def lead_times(run: dict) -> list[int]:
    """The leads a run's targets are at: `lead` (one or a list), or lead, 2 lead, ..., K lead for rollout K."""
    lead, steps = run["lead"], run.get("rollout", 1)
    if steps > 1:
        return [lead * k for k in range(1, steps + 1)]
    return [lead] if isinstance(lead, int) else list(lead)


def config_hash(run: dict) -> str:
    """sha256 of what decides a run's result: not the store's path, not the EXECUTION_KEYS."""
    decisive = {k: v for k, v in run.items() if k not in EXECUTION_KEYS}
    decisive["store"] = {k: v for k, v in run["store"].items() if k != "path"}
    if decisive.get("init"):  # the weights count, not where they lie
        decisive["init"] = {k: v for k, v in decisive["init"].items() if k != "path"}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


def run_name(run: dict) -> str:
    """`<model>-<store name>-<8 hex of config_hash>`, e.g. unet-demo-3f9a1c2e."""
    return f"{run['model']}-{run['store']['name']}-{config_hash(run)[:8]}"
