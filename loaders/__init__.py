"""PyTorch access to a store (memory-mapped Dataset, batch sampler, GPU prefetch): see issue 3."""

__all__: list[str] = []
