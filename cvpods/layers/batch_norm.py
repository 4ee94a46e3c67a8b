"""Normalisation layers by name: FrozenBN, BN, SyncBN, GN."""

from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..utils import comm

#: GroupNorm group count used by every "GN" layer (the FCOS and detectron2 convention).
GN_NUM_GROUPS = 32

NORM_NAMES = ("", "FrozenBN", "BN", "SyncBN", "GN")


def get_norm(norm: str | None, out_channels: int) -> nn.Module | None:
    """A normalisation layer for ``out_channels`` channels, or None for ``""``/None.

    ``SyncBN`` is ``nn.SyncBatchNorm`` in a multi-process run and plain BatchNorm otherwise.
    """
    if not norm:
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(out_channels)
    if norm == "BN":
        return nn.BatchNorm2d(out_channels)
    if norm == "SyncBN":
        if comm.get_world_size() > 1:
            return nn.SyncBatchNorm(out_channels)
        return nn.BatchNorm2d(out_channels)
    if norm == "GN":
        return nn.GroupNorm(GN_NUM_GROUPS, out_channels)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORM_NAMES}")


def freeze_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d/SyncBatchNorm in ``module`` by a FrozenBatchNorm2d (same stats)."""
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = freeze_batch_norms(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module
