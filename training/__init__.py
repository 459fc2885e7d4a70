"""Reference training on a store: models, the training loop, and scoring in physical units.

    from canonstore.training import evaluate, load_config, train
    folder = train(load_config("configs/default.yaml", {"model": "unet"}), "data/intermediate/demo.zarr")
    evaluate(folder)      # -> scores/<run-name>.json

Needs torch (`pip install 'canonstore[torch]'`). Imported eagerly: `train` and `evaluate` are functions and
submodules at once (a lazy name would be replaced by its submodule), and nothing here works without torch.
"""

from canonstore.training.baselines import Climatology, Persistence
from canonstore.training.config import load_config, parse_overrides
from canonstore.training.evaluate import evaluate
from canonstore.training.models import build_model
from canonstore.training.nets import MLP, UNet
from canonstore.training.runs import run_folder
from canonstore.training.train import train

__all__ = [
    "MLP",
    "Climatology",
    "Persistence",
    "UNet",
    "build_model",
    "evaluate",
    "load_config",
    "parse_overrides",
    "run_folder",
    "train",
]
