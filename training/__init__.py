"""Reference models (and, with issue 4, the training loop) for forecasting on a store."""

from canonstore.training.models import UNet

__all__ = ["UNet"]
