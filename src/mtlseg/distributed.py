"""The DDP process group as the engine and the weightings need it: rank, size, and means of
tensors over the processes (no-ops in one process)."""

from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes) of the DDP run; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_size() -> int:
    """Processes of the DDP run (1 without one)."""
    return rank_and_world()[1]


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the processes of a DDP run (``values`` itself in one
    process): a weighting that reads loss values then keeps the same state in every process,
    the state one process would keep on the whole (all processes') batch."""
    if world_size() == 1:
        return values
    mean = values.detach().clone()
    average_over_processes([mean])
    return mean


def average_over_processes(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the processes of a DDP run, in place, with one
    all-reduce of a flat buffer (nothing in one process). Every process must pass tensors of
    the same shapes in the same order."""
    world = world_size()
    if not tensors or world == 1:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])  # the widest dtype of them
    torch.distributed.all_reduce(flat)
    flat /= world
    with torch.no_grad():
        for t, mean in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            t.copy_(mean.view_as(t))
