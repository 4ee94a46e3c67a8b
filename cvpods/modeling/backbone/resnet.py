"""ResNet (depth 18/34/50/101/152, ResNeXt via groups) with detectron2/cvpods parameter names.

State-dict names: ``stem.conv1.weight``, ``stem.conv1.norm.*``, ``res2.0.conv1.weight``,
``res2.0.conv1.norm.*``, ..., ``res2.0.shortcut.weight``, ``res2.0.shortcut.norm.*``; an MSRA
(Caffe2) or official model-zoo ResNet loads without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import Conv2d, ShapeSpec, freeze_batch_norms, get_norm
from .backbone import Backbone

#: Blocks per stage (res2..res5) for each supported depth.
STAGE_BLOCKS = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop training ``module``: no parameter requires grad, BatchNorms become FrozenBatchNorm2d."""
    for p in module.parameters():
        p.requires_grad = False
    return freeze_batch_norms(module)


def _kaiming_fill(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _Block(nn.Module):
    """Common parts of residual blocks: the optional projection shortcut and freezing."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.shortcut is None else self.shortcut(x)


class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34): ``relu(conv2(relu(conv1(x))) + shortcut(x))``.

    ``x [N, in_channels, H, W]`` -> ``[N, out_channels, H / stride, W / stride]``; ``norm`` is
    the convs' norm (``"BN"``, ``"FrozenBN"``, ``"GN"``, ...). A 1x1 projection shortcut is
    added when the channel counts differ.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "BN"
    ) -> None:
        super().__init__(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for conv in (self.conv1, self.conv2, self.shortcut):
            if conv is not None:
                _kaiming_fill(conv)

    def last_norm(self) -> nn.Module | None:
        """The norm of the residual branch's last conv (zeroed by ZERO_INIT_RESIDUAL)."""
        return self.conv2.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        return F.relu_(out + self.residual(x))


class BottleneckBlock(_Block):
    """1x1 reduce, 3x3 (grouped, dilated), 1x1 expand (ResNet-50 and deeper).

    ``x [N, in_channels, H, W]`` -> ``[N, out_channels, H / stride, W / stride]``. The stride is
    in the first 1x1 conv (``stride_in_1x1``, MSRA models) or in the 3x3 conv (torchvision);
    ``num_groups`` > 1 makes it a ResNeXt block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None:
                _kaiming_fill(conv)

    def last_norm(self) -> nn.Module | None:
        """The norm of the residual branch's last conv (zeroed by ZERO_INIT_RESIDUAL)."""
        return self.conv3.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """See the class docstring."""
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        return F.relu_(out + self.residual(x))


class BasicStem(nn.Module):
    """7x7 stride-2 conv + norm + ReLU, then 3x3 stride-2 max pooling (total stride 4)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN") -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = 4
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        _kaiming_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, in_channels, H, W]`` -> ``[N, out_channels, ceil(H / 4), ceil(W / 4)]``."""
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(Backbone):
    """A stem followed by stages ``res2``..``res5``; returns the stages named in ``out_features``.

    Args:
        stem: the stem (stride 4).
        stages: the stages in order (res2 first), each a Sequential of residual blocks.
        out_features: the outputs to return, among ``"stem"`` and ``"res2"``.. (strides 4, 4,
            8, 16, 32 with the standard strides).
    """

    def __init__(
        self, stem: BasicStem, stages: list[nn.Sequential], out_features: list[str]
    ) -> None:
        super().__init__()
        self.stem = stem
        self._out_features = list(out_features)
        self._out_feature_strides = {"stem": stem.stride}
        self._out_feature_channels = {"stem": stem.out_channels}
        self.stage_names: list[str] = []
        stride = stem.stride
        for index, stage in enumerate(stages):
            name = f"res{index + 2}"
            self.add_module(name, stage)
            self.stage_names.append(name)
            stride *= int(stage[0].stride)
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = stage[-1].out_channels
        unknown = [f for f in out_features if f not in self._out_feature_channels]
        if unknown:
            raise ValueError(
                f"ResNet OUT_FEATURES {unknown} are not available; choose from {list(self._out_feature_channels)}"
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [N, C, H, W]`` -> ``{name: [N, C_name, H / stride_name, W / stride_name]}`` for
        the names in ``out_features`` (see :meth:`output_shape`)."""
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def freeze(self, freeze_at: int) -> ResNet:
        """Freeze the stem (``freeze_at >= 1``) and stages res2.. up to res{freeze_at}."""
        if freeze_at >= 1:
            freeze_module(self.stem)
        for index, name in enumerate(self.stage_names, start=2):
            if freeze_at >= index:
                for block in getattr(self, name):
                    freeze_module(block)
        return self


def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.BACKBONE.FREEZE_AT``, for inputs with
    ``input_shape.channels`` channels (default 3); stages after the last of OUT_FEATURES are
    not built."""
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in STAGE_BLOCKS:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH={depth} is not supported; choose from {sorted(STAGE_BLOCKS)}"
        )
    norm = r.NORM
    stem = BasicStem(input_shape.channels or 3, r.STEM_OUT_CHANNELS, norm)
    out_features = list(r.OUT_FEATURES)
    last_stage = max(int(f[-1]) for f in out_features if f.startswith("res")) if out_features else 5
    basic = depth in (18, 34)
    if basic and r.RES5_DILATION != 1:
        raise ValueError(
            f"ResNet-{depth} does not support MODEL.RESNETS.RES5_DILATION={r.RES5_DILATION}"
        )
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}")

    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for stage_index, num_blocks in enumerate(STAGE_BLOCKS[depth][: last_stage - 1], start=2):
        dilation = r.RES5_DILATION if stage_index == 5 else 1
        first_stride = 1 if stage_index == 2 or dilation == 2 else 2
        blocks = []
        for block_index in range(num_blocks):
            stride = first_stride if block_index == 0 else 1
            if basic:
                block = BasicBlock(in_channels, out_channels, stride=stride, norm=norm)
            else:
                block = BottleneckBlock(
                    in_channels,
                    out_channels,
                    bottleneck_channels=bottleneck_channels,
                    stride=stride,
                    num_groups=r.NUM_GROUPS,
                    norm=norm,
                    stride_in_1x1=r.STRIDE_IN_1X1,
                    dilation=dilation,
                )
            if r.ZERO_INIT_RESIDUAL and isinstance(
                block.last_norm(), (nn.BatchNorm2d, nn.GroupNorm)
            ):
                nn.init.zeros_(block.last_norm().weight)
            blocks.append(block)
            in_channels = out_channels
        stages.append(nn.Sequential(*blocks))
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
