"""PyTorch access to a store: a memory-mapped Dataset, seeded batch sampler, GPU prefetch, and the
raw-NetCDF baseline loader it is measured against. Needs torch (`pip install canonstore[torch]`).

    from canonstore import open_store
    train = open_store("data/intermediate/demo.zarr").dataset("train", lead=1)
    loader = open_store("data/intermediate/demo.zarr").loader("train", batch_size=32, device="cuda")
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # an optional dependency: say what to install
    raise ImportError(
        "canonstore.loaders needs PyTorch: pip install 'canonstore[torch]' "
        "(or torch itself, e.g. the CPU build torch==2.13.0)"
    ) from exc

from canonstore.loaders.blocks import random_blocks
from canonstore.loaders.dataset import StoreDataset, sample_times, seeded_generator, worker_init_fn
from canonstore.loaders.netcdf import NetCDFDataset
from canonstore.loaders.prefetch import BatchLoader
from canonstore.loaders.sampler import BatchSampler

__all__ = [
    "BatchLoader",
    "BatchSampler",
    "NetCDFDataset",
    "StoreDataset",
    "random_blocks",
    "sample_times",
    "seeded_generator",
    "worker_init_fn",
]
