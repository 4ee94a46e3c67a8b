"""Optimizer and learning-rate schedules built from the SOLVER config section."""

from .build import build_optimizer, get_param_groups, maybe_add_gradient_clipping
from .lr_scheduler import WarmupCosineLR, WarmupMultiStepLR, build_lr_scheduler

__all__ = [
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "build_lr_scheduler",
    "build_optimizer",
    "get_param_groups",
    "maybe_add_gradient_clipping",
]
