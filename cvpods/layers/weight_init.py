"""Weight initialisation of the detection heads' layers."""

from __future__ import annotations

from torch import nn


def init_head_layers(module: nn.Module) -> None:
    """Head initialisation: conv weights ~ N(0, 0.01), conv biases 0, GroupNorm 1 / 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.GroupNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
