"""torch.distributed for recovery: the process group torchrun describes, DDP, and the data shard of a rank.

Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1 in the environment) the stage starts the process
group itself (gloo on the CPU, NCCL on CUDA) unless the caller already did, wraps the student in
DistributedDataParallel (gradients averaged over the ranks), gives rank r the batches r, r + N,
r + 2N, ... of the data, and lets rank 0 alone write checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    owned: bool = False  # this stage started the process group and stops it

    @classmethod
    def start(cls, device: torch.device) -> "Distributed":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not dist.is_available():
            raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), owned=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`module` in DistributedDataParallel when there is more than one process."""
        if self.world == 1:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def stop(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
