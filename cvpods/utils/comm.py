"""Helpers for multi-process (torch.distributed) runs; all are no-ops in a single process."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (else ``model``).

    Args:
        model: a model, possibly wrapped (several times).

    Returns:
        the innermost wrapped module (state-dict keys without the ``module.`` prefix).
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def is_dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_ready() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_ready() else 0


def get_local_rank() -> int:
    """Rank within this machine (set by :func:`cvpods.engine.launch`; 0 without one)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0")) if is_dist_ready() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes (a no-op in a single process)."""
    if is_dist_ready() and get_world_size() > 1:
        dist.barrier()


def all_gather(data: Any) -> list[Any]:
    """Every process's picklable ``data``, as a list ordered by rank."""
    if get_world_size() == 1:
        return [data]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, data)
    return gathered


def gather(data: Any, dst: int = 0) -> list[Any]:
    """Every process's ``data`` on rank ``dst`` (a list by rank); other ranks get ``[]``."""
    if get_world_size() == 1:
        return [data]
    gathered: list[Any] | None = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(data, gathered, dst=dst)
    return gathered if gathered is not None else []


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (a new tensor; the input is left untouched)."""
    if get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shared_random_seed() -> int:
    """A random integer that is the same in every process (drawn on rank 0)."""
    import numpy as np

    seed = int(np.random.randint(2**31))
    return int(all_gather(seed)[0])
