"""Data parallelism: process-group set-up and the few collectives the trainer needs.

A run with trainer.world_size = W > 1 is W processes (torchrun locally, SLURM tasks on a
cluster) that read their rank from the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). NCCL on GPUs, gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from scaleflow.errors import ConfigError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def env_group() -> Group:
    """The rank and size this process was started with (single process if none)."""
    return Group(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def setup(expected_world_size: int, device: torch.device) -> Group:
    """Join the process group when started as one of several processes."""
    group = env_group()
    if group.world_size != expected_world_size:
        raise ConfigError(
            f"trainer.world_size={expected_world_size} but this process was started as one of "
            f"{group.world_size}: start it with torchrun --nproc_per_node {expected_world_size} (the local "
            "launcher does) or SLURM tasks")
    if group.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=group.rank, world_size=group.world_size)
    return group


def mean(value: torch.Tensor, group: Group) -> torch.Tensor:
    """The mean of a tensor over ranks (the tensor itself when single-process)."""
    if not group.active:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / group.world_size


def any_rank(flag: bool, group: Group, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    if not group.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def teardown(group: Group) -> None:
    """Leave the process group once every rank has reached this point."""
    if group.active and dist.is_initialized():
        # Without the barrier a rank that finishes first (while rank 0 still writes its last
        # checkpoint) tears gloo down under its peer and aborts ("terminate called without an
        # active exception"): 2 of 12 two-process runs stopped at a step did, on CPU.
        dist.barrier()
        dist.destroy_process_group()
