"""Process-group setup for ``torchrun`` or SLURM (``srun``): nccl on GPU, gloo on CPU; single process otherwise.

Ranks come from the environment as open_clip_train reads it (``world_info_from_env``: torchrun's ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK``, else SLURM's ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``, else MPI's);
the rendezvous is ``env://``, so an sbatch script exports ``MASTER_ADDR`` (the first node) and ``MASTER_PORT``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from open_clip_train.distributed import world_info_from_env


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment, or run as a single process."""
    local_rank, global_rank, world_size = world_info_from_env()
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=global_rank)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def all_reduce_sum(value: float, info: DistInfo) -> float:
    """Sum a Python number over ranks (counts that each rank made on its own data)."""
    if not info.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item())


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
