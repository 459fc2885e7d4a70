"""Runs: a config resolved against a store and a device, its name and folder, and a trained run loaded back.

    run = resolve(load_config("configs/default.yaml"), store, "cpu")   # the run's full description
    run_name(run)                                    # 'unet-demo-3f9a1c2e'
    run, store, model, loader, saved = load_run(Path("runs/unet-demo-3f9a1c2e"), "test")

A run's name is its model, its store and a short hash of everything that decides its result
(the resolved config and the store's build), so two different runs never share a folder and the
same command twice finds the same run (and resumes or skips it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from canonstore._time import is_dates
from canonstore.errors import ConfigError, RunError
from canonstore.formats import open_store
from canonstore.training.baselines import supported_harmonics
from canonstore.training.checkpoint import initial_weights, load_checkpoint
from canonstore.training.config import EXECUTION_KEYS, MODELS, TRAINED, TRAINING_KEYS
from canonstore.training.data import make_loader, pick_device
from canonstore.training.metrics import lat_weighting
from canonstore.training.models import build_model, load_weights
from canonstore.training.tracking import read_config


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
        run["init"] = initial_weights(run["init"])
    run["device"] = device
    run["world_size"] = world_size
    run["store"] = {"name": store.attrs["name"], "path": str(store.path), "build": store.build_id}
    run["warnings"] = []
    if config["lat_weighted"]:
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
    """Fit only the harmonics the train split supports (`baselines.supported_harmonics`), and say so: a
    store shorter than a year gets no annual harmonics rather than a fit extrapolated over the year."""
    args = run["model_args"]
    train = store.time[store.split_indices("train")]
    if not (args["annual_harmonics"] or args["diurnal_harmonics"]) or not is_dates(train):
        return  # no dates: the fit says what to set (training.baselines.time_phases)
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


def run_folder(config: dict, store, runs_dir: str | Path = "runs") -> Path:
    """Where the run `config` on `store` lives: runs/<model>-<store>-<hash>."""
    store = open_store(store) if isinstance(store, (str, Path)) else store
    world = int(os.environ.get("WORLD_SIZE", 1))
    return Path(runs_dir) / run_name(resolve(config, store, pick_device(config["device"]).type, world))


def check_same_build(store, run: dict, folder: Path) -> None:
    """Refuse a store that is not the build run `folder` was trained on."""
    if store.build_id != run["store"]["build"]:  # the build `store` reads, not whatever its path holds now
        raise RunError(
            f"{store.path} is not the build run {folder.name} was trained on "
            f"(it was rebuilt since?): train again with `make train`"
        )


def load_run(folder: Path, split: str, checkpoint: str = "best", store=None, steps: int | None = None):
    """(run config, store, model with the checkpoint's weights, ordered loader of `split`, checkpoint).

    `steps` K runs a trained model autoregressively for K steps of its lead (a one-step run, or a
    rollout run for more or fewer steps than it was trained on): the loader's targets are then at
    lead, 2 lead, ..., K lead, and the returned config says `rollout: K`.
    """
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
