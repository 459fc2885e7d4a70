"""What each training config key means and its default: README's "Training config" table, generated from code.

    python -m canonstore.training.config_reference     # prints the table README.md carries

`tests/training/test_config_reference.py` keeps README, `configs/default.yaml` and `config.DEFAULTS` in step.
"""

from __future__ import annotations

import json

from canonstore.training.config import DEFAULTS

MEANINGS = {
    "model": "unet, mlp, persistence, climatology, coarse-up (the last three are baselines, not trained)",
    "task": "forecast, or downscaling (inputs: coarse-up fields; target: the residual)",
    "coarse": "downscaling: the coarse grid [h, w], or one factor for both axes",
    "loader": "store (the batch path), or netcdf: the raw source files read and normalised per sample (baseline)",
    "lead": "target = step t + lead, in store steps; a list [1, 2, 4] stacks the targets at each lead",
    "rollout": "K > 1: the model's forecast is fed back K times (targets t + lead .. t + K lead)",
    "history": "extra past steps stacked as input channels",
    "channels": "input channels by name (null: all of the store's)",
    "targets": "target channels by name (null: the input channels)",
    "static": "append the store's static fields to the inputs: true, false or a list of names",
    "encodings": "positional and temporal inputs computed per batch: latlon, doy, hod, toa",
    "blocks": "train on random patches: {size: [h, w], per_epoch: s} (s = 0: one per sample per batch)",
    "lat_weighted": "weight loss and scores by cell area (WeatherBench 2's latitude weights)",
    "batch_size": "samples per batch",
    "seed": "seeds weights, sample order and patches: the same seed gives the same run",
    "workers": "gather threads (store) or DataLoader worker processes (netcdf); not part of the run's hash",
    "device": "auto, cpu, cuda",
    "residual": "predict the change from the input at t (targets must be inputs)",
    "init": "start from another run's weights: its folder (best.pt) or a checkpoint file",
    "epochs": "passes over the train split",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay",
    "scheduler": "cosine, linear, constant, after a linear warm-up",
    "warmup": "fraction of all steps spent warming up",
    "grad_clip": "largest gradient norm (0: off)",
    "patience": "epochs without a better validation loss before stopping early",
    "min_delta": "an improvement smaller than this does not count for patience",
    "checkpoint_every": "keep checkpoints/epoch-<n>.pt every N epochs (0: only best.pt and last.pt)",
    "checkpoint_steps": "also save last.pt every N steps, so that a killed run resumes mid-epoch (0: off)",
    "unet.width": "UNet channels at full resolution (doubled at each level down)",
    "unet.depth": "UNet halvings of the grid (small grids, e.g. CMIP: depth 1 or 2)",
    "mlp.width": "hidden units of the per-point MLP",
    "mlp.layers": "hidden layers of the per-point MLP",
    "climatology.annual_harmonics": "harmonics of the time of year the climatology fits",
    "climatology.diurnal_harmonics": "harmonics of the time of day the climatology fits",
}


def flat_defaults() -> dict:
    """DEFAULTS with each model's section spread into `model.key` entries (empty sections have none)."""
    flat = {}
    for key, value in DEFAULTS.items():
        if isinstance(value, dict) and key not in ("blocks",):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def reference_table() -> str:
    """The Markdown table of every key: its default (as JSON writes it, which YAML reads) and what it means."""
    rows = ["| key | default | meaning |", "|-----|---------|---------|"]
    for key, value in flat_defaults().items():
        rows.append(f"| `{key}` | `{json.dumps(value)}` | {MEANINGS[key]} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_table(), end="")
