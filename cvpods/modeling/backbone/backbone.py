"""The backbone interface: images in, named feature maps out."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

from ...layers import ShapeSpec


class Backbone(nn.Module, metaclass=ABCMeta):
    """A network mapping ``[N, C, H, W]`` images to a dict of named feature maps."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: [N, C_name, H / stride_name, W / stride_name]}``."""

    @property
    def size_divisibility(self) -> int:
        """Inputs must be padded to a multiple of this (0: no constraint)."""
        return 0

    def output_shape(self) -> dict[str, ShapeSpec]:
        """``{name: ShapeSpec(channels, stride)}`` of every output (stride in input pixels)."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
