"""Box heads: pooled ROI features -> one feature vector per ROI."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...configs import configurable
from ...layers import Conv2d, ShapeSpec, get_norm


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill: uniform with bound sqrt(3 / fan_in); zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2's MSRAFill: normal with std sqrt(2 / fan_out); zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class FastRCNNConvFCHead(nn.Module):
    """``num_conv`` 3x3 convs (``conv1``..) then ``num_fc`` fully connected layers (``fc1``..),
    each followed by ReLU. ``2fc``: num_conv 0, num_fc 2, fc_dim 1024.

    ``[R, C, S, S]`` pooled features -> ``[R, fc_dim]`` (or the conv map when num_fc is 0).

    Args:
        input_shape: the pooled features' ``channels``, ``height`` and ``width`` (S x S).
        num_conv: 3x3 convs (stride 1, ``conv_dim`` channels each), before the FC layers.
        conv_dim: their output channels.
        num_fc: fully connected layers.
        fc_dim: their output features.
        norm: the convs' norm (``""``: none, a conv bias instead; ``"GN"``, ``"BN"``, ...).

    Or ``FastRCNNConvFCHead(cfg, input_shape)`` (MODEL.ROI_BOX_HEAD).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: ShapeSpec,
        num_conv: int = 0,
        conv_dim: int = 256,
        num_fc: int = 2,
        fc_dim: int = 1024,
        norm: str = "",
    ) -> None:
        super().__init__()
        if num_conv + num_fc <= 0:
            raise ValueError("MODEL.ROI_BOX_HEAD needs NUM_CONV + NUM_FC > 0")
        self._output_size = (input_shape.channels, input_shape.height, input_shape.width)
        self.conv_norm_relus = []
        for k in range(num_conv):
            conv = Conv2d(
                self._output_size[0],
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            c2_msra_fill(conv)
            self.add_module(f"conv{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            self._output_size = (conv_dim, self._output_size[1], self._output_size[2])
        self.fcs = []
        for k in range(num_fc):
            in_features = (
                self._output_size
                if isinstance(self._output_size, int)
                else self._output_size[0] * self._output_size[1] * self._output_size[2]
            )
            fc = nn.Linear(in_features, fc_dim)
            c2_xavier_fill(fc)
            self.add_module(f"fc{k + 1}", fc)
            self.fcs.append(fc)
            self._output_size = fc_dim

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        """MODEL.ROI_BOX_HEAD.NUM_CONV, CONV_DIM, NUM_FC, FC_DIM and NORM."""
        h = cfg.MODEL.ROI_BOX_HEAD
        return dict(
            input_shape=input_shape,
            num_conv=h.NUM_CONV,
            conv_dim=h.CONV_DIM,
            num_fc=h.NUM_FC,
            fc_dim=h.FC_DIM,
            norm=h.NORM,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [R, C, S, S]`` -> ``[R, fc_dim]`` (or ``[R, conv_dim, S, S]`` without FC layers)."""
        for layer in self.conv_norm_relus:
            x = layer(x)
        if self.fcs:
            x = x.flatten(1)
            for layer in self.fcs:
                x = F.relu(layer(x))
        return x

    @property
    def output_size(self) -> int | tuple[int, int, int]:
        """FC_DIM, or ``(channels, height, width)`` without fully connected layers."""
        return self._output_size
