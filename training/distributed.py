"""This process's place in a distributed run under torchrun (rank, world size), or a single process.

    context = DistributedContext(device)       # joins the process group when WORLD_SIZE > 1
    loss = context.mean(loss_sum)              # the mean over the processes
    stop = context.agree(stop)                 # the main process's decision, on every process

Every collective runs on `device`: NCCL takes CUDA tensors only, gloo CPU ones.
"""

from __future__ import annotations

import os

import torch


class DistributedContext:
    """Rank, world size and the main process of a run, with the two collectives training needs."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.device = device
        if self.world > 1 and not torch.distributed.is_initialized():
            # NCCL refuses two ranks on one GPU; gloo runs the same collectives on CUDA tensors.
            shared = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > max(1, torch.cuda.device_count())
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" and not shared else "gloo")
        self.main = self.rank == 0

    def mean(self, value: torch.Tensor) -> float:
        """The mean of `value` over the processes."""
        if self.world > 1:
            value = value.to(self.device, copy=True)
            torch.distributed.all_reduce(value)
        return value.item() / self.world

    def agree(self, flag: bool) -> bool:
        """The main process's decision, on every process."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())
