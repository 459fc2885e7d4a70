"""PyTorch access to a store: a memory-mapped Dataset, seeded batch sampler, GPU prefetch, and the
raw-NetCDF baseline loader it is measured against. Needs torch (`pip install canonstore[torch]`).

    from canonstore.loaders import open_dataset, open_loader   # also: from canonstore import ...
    train = open_dataset("data/intermediate/demo.zarr", "train", lead=1)
    loader = open_loader("data/intermediate/demo.zarr", "train", batch_size=32, device="cuda")

The names load their modules (and torch) on first use.
"""

import importlib.util

from canonstore._lazy import lazy_names

if importlib.util.find_spec("torch") is None:  # an optional dependency: say what to install
    raise ImportError(
        "canonstore.loaders needs PyTorch: pip install 'canonstore[torch]' "
        "(or torch itself, e.g. the CPU build torch==2.13.0)"
    )

_NAMES = {
    "BatchLoader": "canonstore.loaders.prefetch",
    "BatchSampler": "canonstore.loaders.sampler",
    "NetCDFDataset": "canonstore.loaders.netcdf",
    "StoreDataset": "canonstore.loaders.dataset",
    "open_dataset": "canonstore.loaders.api",
    "open_loader": "canonstore.loaders.api",
    "random_blocks": "canonstore.loaders.blocks",
    "sample_times": "canonstore.loaders.dataset",
    "seeded_generator": "canonstore.loaders.dataset",
    "worker_init_fn": "canonstore.loaders.dataset",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
