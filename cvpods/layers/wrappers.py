"""Thin wrappers around torch.nn layers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm layer (child ``norm``) and activation.

    Keeping the norm as a child gives the state-dict names ``conv.weight`` / ``conv.norm.*``.
    """

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class Scale(nn.Module):
    """Multiply the input by one learnable scalar (parameter ``scale``, initialised to ``init_value``)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
