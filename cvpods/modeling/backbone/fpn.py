"""Feature Pyramid Network on a bottom-up backbone, with the RetinaNet/FCOS P6-P7 top block or the
Faster R-CNN P6 max-pool top block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import Conv2d, ShapeSpec, get_norm
from .backbone import Backbone
from .resnet import build_resnet_backbone


def _xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's XavierFill: uniform with bound sqrt(3 / fan_in); zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class LastLevelP6P7(nn.Module):
    """P6 = 3x3/2 conv of the input feature; P7 = 3x3/2 conv of relu(P6).

    Args:
        in_channels: channels of the input feature (C5: 2048 for ResNet-50; P5: the FPN width).
        out_channels: channels of P6 and P7 (the FPN width).
        in_feature: the feature P6 is computed from: a bottom-up output (``"res5"``) or ``"p5"``.
    """

    num_levels = 2

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5") -> None:
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            _xavier_fill(conv)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x [N, C_in, H, W]`` -> ``[P6 [N, C, ceil(H/2), ceil(W/2)], P7 [N, C, ceil(H/4), ceil(W/4)]]``."""
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class LastLevelMaxPool(nn.Module):
    """P6 = P5 subsampled by a 1x1 max-pool of stride 2 (the Faster R-CNN FPN top block)."""

    num_levels = 1

    def __init__(self, in_feature: str = "p5") -> None:
        super().__init__()
        self.in_feature = in_feature

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x [N, C, H, W]`` -> ``[[N, C, ceil(H/2), ceil(W/2)]]``."""
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class FPN(Backbone):
    """Lateral 1x1 + top-down nearest upsampling + 3x3 output convs over ``in_features``.

    Outputs ``p{stage}`` for each input stage (e.g. p3, p4, p5) and, with a top block, the
    levels after it (p6, p7). Parameters: ``fpn_lateral{stage}``, ``fpn_output{stage}``,
    ``top_block.*``, ``bottom_up.*``.

    Args:
        bottom_up: the backbone whose outputs ``in_features`` are fused (e.g. a ResNet).
        in_features: those outputs, finest first (strides must double from one to the next).
        out_channels: the width of every output level.
        norm: norm of the lateral and output convs (``""``: none, the convs get a bias).
        top_block: extra coarser levels from the last one (:class:`LastLevelP6P7`,
            :class:`LastLevelMaxPool`) or None.
        fuse_type: ``"sum"`` or ``"avg"`` of the lateral and the upsampled top-down feature.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: list[str],
        out_channels: int,
        norm: str = "",
        top_block: nn.Module | None = None,
        fuse_type: str = "sum",
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"MODEL.FPN.FUSE_TYPE must be 'sum' or 'avg', got {fuse_type!r}")
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES {missing} are not produced by the backbone (it gives {list(shapes)})"
            )
        strides = [shapes[f].stride for f in in_features]
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.top_block = top_block
        self._fuse_type = fuse_type
        self.lateral_convs = []
        self.output_convs = []
        use_bias = norm == ""
        for feature, stride in zip(in_features, strides):
            stage = int(math.log2(stride))
            lateral = Conv2d(
                shapes[feature].channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            output = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            _xavier_fill(lateral)
            _xavier_fill(output)
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last_stage = int(math.log2(strides[-1]))
            for level in range(1, top_block.num_levels + 1):
                self._out_feature_strides[f"p{last_stage + level}"] = 2 ** (last_stage + level)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = strides[-1]

    @property
    def size_divisibility(self) -> int:
        """The stride of the coarsest input feature: inputs padded to a multiple of it keep the
        top-down upsampling aligned."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [N, 3, H, W]`` (H, W multiples of :attr:`size_divisibility`) ->
        ``{"p<k>": [N, out_channels, H / 2**k, W / 2**k]}`` finest first."""
        bottom_up = self.bottom_up(x)
        features = [bottom_up[f] for f in self.in_features]
        top_down = self.lateral_convs[-1](features[-1])
        results = [self.output_convs[-1](top_down)]
        for feature, lateral_conv, output_conv in zip(
            features[-2::-1], self.lateral_convs[-2::-1], self.output_convs[-2::-1]
        ):
            upsampled = F.interpolate(top_down, scale_factor=2.0, mode="nearest")
            top_down = lateral_conv(feature) + upsampled
            if self._fuse_type == "avg":
                top_down = top_down / 2
            results.insert(0, output_conv(top_down))
        if self.top_block is not None:
            source = self.top_block.in_feature
            if source in bottom_up:
                top_input = bottom_up[source]
            else:
                top_input = results[self._out_features.index(source)]
            results.extend(self.top_block(top_input))
        return dict(zip(self._out_features, results))


def build_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN over MODEL.FPN.IN_FEATURES, with P6/P7 from MODEL.FPN.BLOCK_IN_FEATURES.

    As in RetinaNet and FCOS, P6 is computed from C5 (``"res5"``) by default; ``"p5"`` uses P5.
    ``input_shape``: the images' channels (``ShapeSpec(channels=3)``). With the FCOS defaults
    the outputs are p3..p7 (strides 8..128), MODEL.FPN.OUT_CHANNELS channels each.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    block_in = cfg.MODEL.FPN.BLOCK_IN_FEATURES
    if block_in == "p5":
        top_in_channels = out_channels
    else:
        shapes = bottom_up.output_shape()
        if block_in not in shapes:
            raise ValueError(
                f"MODEL.FPN.BLOCK_IN_FEATURES={block_in!r} is neither 'p5' nor a backbone output {list(shapes)}"
            )
        top_in_channels = shapes[block_in].channels
    return FPN(
        bottom_up=bottom_up,
        in_features=list(cfg.MODEL.FPN.IN_FEATURES),
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(top_in_channels, out_channels, block_in),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN over MODEL.FPN.IN_FEATURES (res2..res5 for Faster R-CNN), with P6 a stride-2
    max-pool of P5 (:class:`LastLevelMaxPool`): outputs p2..p6, no extra parameters."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=list(cfg.MODEL.FPN.IN_FEATURES),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
