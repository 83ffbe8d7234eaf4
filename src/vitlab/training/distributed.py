"""Data-parallel training through torchrun + DistributedDataParallel (no home-made engine).

``torchrun --nproc_per_node N -m vitlab.cli train ...`` starts N copies of the same command;
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and this module turns them into a process group
(NCCL on GPUs, gloo on CPUs). The global batch (``--train.batch_size``) is split evenly over the
processes, so a recipe means the same on 1 or N devices; only rank 0 writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Sum each tensor over the processes (no-op on one)."""
        if not self.enabled:
            return list(values)
        stacked = torch.stack([v.detach().double().reshape(()) for v in values])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return list(stacked.unbind())

    def mean(self, *values: float) -> list[float]:
        """Each number averaged over the processes (as given on one): what every process must decide alike."""
        if not self.enabled:
            return list(values)
        return [v.item() / self.world_size for v in self.all_sum(*(torch.tensor(float(x)) for x in values))]

    def sum_tensor(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``tensor`` (on the CPU) summed over the processes, reduced on ``device`` (NCCL reduces on the GPU)."""
        if not self.enabled:
            return tensor
        reduced = tensor.to(device, dtype=torch.float64)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.round().to("cpu", dtype=tensor.dtype)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device_name: str) -> Distributed:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Distributed(rank, world, local)


def local_batch_size(batch_size: int, ctx: Distributed) -> int:
    """This process's share of the global batch."""
    if batch_size % ctx.world_size:
        raise ValueError(f"--train.batch_size {batch_size} is the global batch and must divide evenly over "
                         f"{ctx.world_size} processes; choose a multiple of {ctx.world_size}")
    return batch_size // ctx.world_size
