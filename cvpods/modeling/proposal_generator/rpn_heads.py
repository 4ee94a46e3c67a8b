"""RPN heads: the standard one-conv head, and the deep fixed / fine-grained dynamic heads.

Every head predicts, at every cell of every level, A objectness logits and A x 4 anchor deltas
with two 1x1 convs (``objectness_logits``, ``anchor_deltas``) shared across levels. They differ
in the tower before the predictors:

* :class:`StandardRPNHead`: one 3x3 conv + ReLU per level (``conv``; cvpods / detectron2 names).
* :class:`FixRPNHead`: ``NUM_CONVS // 2`` stages of scale fusion across the FPN levels + a
  residual depth cell (:class:`~cvpods.layers.ScaleFusion`), the static deep baseline.
* :class:`DynamicRPNHead`: the same stages with spatial gates on every unit
  (:class:`~cvpods.layers.DynamicScaleFusion`); it returns the head's per-image cost and, in
  evaluation, computes the gated depth cells with the masked convolution (sparse inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import CostCollector, DynamicScaleFusion, GateCost, ScaleFusion, ShapeSpec

RPN_HEAD_NAMES = ("StandardRPNHead", "FixRPNHead", "DynamicRPNHead")


@dataclass
class RPNHeadOutputs:
    """Per level l: ``objectness_logits [N, A, H_l, W_l]``, ``anchor_deltas [N, A * 4, H_l, W_l]``;
    ``cost``: the dynamic head's per-image cost in MACs (None for static heads); ``gate_maps``
    (dynamic head, on request) per level ``[N, H_l, W_l]``: the fraction of depth cells computed
    at each position; ``fusion_gate_maps`` (likewise): the fraction of scale-fusion units
    computed there."""

    objectness_logits: list[torch.Tensor]
    anchor_deltas: list[torch.Tensor]
    cost: GateCost | None = None
    gate_maps: list[torch.Tensor] | None = None
    fusion_gate_maps: list[torch.Tensor] | None = None


def _single_channel_count(input_shape: list[ShapeSpec]) -> int:
    channels = {s.channels for s in input_shape}
    if len(channels) != 1:
        raise ValueError(f"RPN heads need the same channel count on every level, got {channels}")
    return channels.pop()


def _single_anchor_count(num_cell_anchors: list[int]) -> int:
    if len(set(num_cell_anchors)) != 1:
        raise ValueError(
            f"RPN heads need the same number of anchors per cell on every level, got {num_cell_anchors}"
        )
    return num_cell_anchors[0]


class _RPNPredictors(nn.Module):
    """``objectness_logits`` and ``anchor_deltas`` 1x1 convs, weights ~N(0, 0.01), biases 0."""

    def __init__(self, cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> None:
        super().__init__()
        self.in_channels = _single_channel_count(input_shape)
        self.num_anchors = _single_anchor_count(num_cell_anchors)
        # Strides of the levels, finest first (the demo's gate maps and tools/head_flops.py).
        self.fpn_strides = [s.stride for s in input_shape]
        self.num_convs = cfg.MODEL.RPN.NUM_CONVS

    def build_predictors(self, box_dim: int = 4) -> None:
        c = self.in_channels
        self.objectness_logits = nn.Conv2d(c, self.num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(c, self.num_anchors * box_dim, kernel_size=1)
        for conv in (self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def predict(
        self,
        towers: list[torch.Tensor],
        cost: GateCost | None = None,
        gate_maps: list[torch.Tensor] | None = None,
        fusion_gate_maps: list[torch.Tensor] | None = None,
    ) -> RPNHeadOutputs:
        return RPNHeadOutputs(
            [self.objectness_logits(x) for x in towers],
            [self.anchor_deltas(x) for x in towers],
            cost,
            gate_maps,
            fusion_gate_maps,
        )


class StandardRPNHead(_RPNPredictors):
    """cvpods' RPN head: ``relu(conv3x3(x))`` then the two predictors, on every level."""

    def __init__(self, cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> None:
        super().__init__(cfg, input_shape, num_cell_anchors)
        c = self.in_channels
        self.conv = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)
        self.build_predictors()

    def forward(
        self, features: list[torch.Tensor], return_gate_maps: bool = False
    ) -> RPNHeadOutputs:
        """``features``: FPN levels ``[N, C, H_l, W_l]``, finest first (a static head has no
        gate maps: ``return_gate_maps`` is accepted and ignored)."""
        return self.predict([F.relu(self.conv(x)) for x in features])

    def cost_per_position(self) -> float:
        """MACs per location of the tower (the 3x3 conv; predictors not counted)."""
        return float(self.in_channels * self.in_channels * 9)


def _num_stages(cfg) -> int:
    num_convs = cfg.MODEL.RPN.NUM_CONVS
    if num_convs < 2 or num_convs % 2:
        raise ValueError(
            "MODEL.RPN.NUM_CONVS must be a positive even number for the deep RPN heads (each "
            f"stage is a depth cell of two convs), got {num_convs}"
        )
    return num_convs // 2


class FixRPNHead(_RPNPredictors):
    """Static deep RPN head: ``NUM_CONVS // 2`` stages (scale fusion + residual cell) in ``subnet``."""

    def __init__(self, cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> None:
        super().__init__(cfg, input_shape, num_cell_anchors)
        rpn = cfg.MODEL.RPN
        self.subnet = nn.ModuleList(
            [
                ScaleFusion(self.in_channels, rpn.RESIZE_METHOD, rpn.NORM)
                for _ in range(_num_stages(cfg))
            ]
        )
        self.build_predictors()

    def forward(
        self, features: list[torch.Tensor], return_gate_maps: bool = False
    ) -> RPNHeadOutputs:
        """``features``: FPN levels ``[N, C, H_l, W_l]``, finest first (no gate maps: static)."""
        levels = list(features)
        for stage in self.subnet:
            levels = stage(levels)
        return self.predict(levels)

    def cost_per_position(self) -> float:
        return sum(stage.cost_per_position() for stage in self.subnet)


class DynamicRPNHead(_RPNPredictors):
    """Fine-grained dynamic RPN head: :class:`FixRPNHead` with a spatial gate on every unit.

    Config: MODEL.RPN.NUM_CONVS, NUM_GROUPS, GATE_ACTIVATION, GATE_ACTIVATION_KARGS,
    RESIZE_METHOD, NORM. The outputs carry the per-image cost (soft / used / full MACs).
    """

    def __init__(self, cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> None:
        super().__init__(cfg, input_shape, num_cell_anchors)
        rpn = cfg.MODEL.RPN
        if self.in_channels % rpn.NUM_GROUPS:
            raise ValueError(
                f"MODEL.RPN.NUM_GROUPS={rpn.NUM_GROUPS} must divide the head's {self.in_channels} channels"
            )
        self.subnet = nn.ModuleList(
            [
                DynamicScaleFusion(
                    self.in_channels,
                    num_groups=rpn.NUM_GROUPS,
                    resize_method=rpn.RESIZE_METHOD,
                    norm=rpn.NORM,
                    gate_activation=rpn.GATE_ACTIVATION,
                    gate_activation_kwargs=dict(rpn.GATE_ACTIVATION_KARGS),
                )
                for _ in range(_num_stages(cfg))
            ]
        )
        self.build_predictors()

    def forward(
        self, features: list[torch.Tensor], return_gate_maps: bool = False
    ) -> RPNHeadOutputs:
        """``features``: FPN levels ``[N, C, H_l, W_l]``, finest first. The outputs carry the
        per-image cost and, with ``return_gate_maps``, the depth cells' and the scale-fusion
        units' gate maps."""
        costs = CostCollector(keep_gate_maps=return_gate_maps)
        if not self.training:  # the sparse inference path reads and writes channels-last maps
            features = [f.contiguous(memory_format=torch.channels_last) for f in features]
        levels = list(features)
        for stage in self.subnet:
            levels = stage(levels, costs)
        return self.predict(levels, costs.total, costs.gate_maps(), costs.fusion_gate_maps())

    def cost_per_position(self) -> float:
        return sum(stage.cost_per_position() for stage in self.subnet)


def build_rpn_head(
    cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]
) -> _RPNPredictors:
    """The head named by MODEL.RPN.HEAD_NAME."""
    heads = {
        "StandardRPNHead": StandardRPNHead,
        "FixRPNHead": FixRPNHead,
        "DynamicRPNHead": DynamicRPNHead,
    }
    name = cfg.MODEL.RPN.HEAD_NAME
    if name not in heads:
        raise ValueError(f"unknown MODEL.RPN.HEAD_NAME {name!r}; expected one of {RPN_HEAD_NAMES}")
    return heads[name](cfg, input_shape, num_cell_anchors)
