"""PyTorch access to a store: a memory-mapped Dataset, seeded batch sampler, GPU prefetch, and the
raw-source baseline loader it is measured against. Needs torch (`pip install canonstore[torch]`).

    from canonstore.loaders import open_dataset, open_loader   # also: from canonstore import ...
    train = open_dataset("data/intermediate/demo.zarr", "train", lead=1)
    loader = open_loader("data/intermediate/demo.zarr", "train", batch_size=32, device="cuda")

The names load their modules (and torch) on first use.
"""

import importlib.util
import warnings

from canonstore._lazy import lazy_names

if importlib.util.find_spec("torch") is None:  # an optional dependency: say what to install
    raise ImportError(
        "canonstore.loaders needs PyTorch: pip install 'canonstore[torch]' "
        "(or torch itself, e.g. the CPU build torch==2.13.0)"
    )

_NAMES = {
    "BatchLoader": "canonstore.loaders.prefetch",
    "BatchSampler": "canonstore.loaders.sampler",
    "RawSourceDataset": "canonstore.loaders.raw",
    "StoreDataset": "canonstore.loaders.dataset",
    "Windows": "canonstore.loaders.windows",
    "open_dataset": "canonstore.loaders.api",
    "open_loader": "canonstore.loaders.api",
    "random_patches": "canonstore.loaders.patches",
    "sample_times": "canonstore.loaders.windows",
    "seeded_generator": "canonstore.loaders.sampler",
    "worker_init_fn": "canonstore.loaders.sampler",
}
__all__ = sorted(_NAMES)
_getattr, __dir__ = lazy_names(__name__, _NAMES)


def __getattr__(name: str):
    if name == "NetCDFDataset":  # its name in 0.1, though it reads GRIB and NWB sources too
        warnings.warn(
            "canonstore.loaders.NetCDFDataset is deprecated: use RawSourceDataset (the same class)",
            DeprecationWarning,
            stacklevel=2,
        )
        name = "RawSourceDataset"
    return _getattr(name)
