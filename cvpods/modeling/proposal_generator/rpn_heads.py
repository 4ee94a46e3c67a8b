"""RPN heads: the standard one-conv head, and the deep fixed / fine-grained dynamic heads.

Every head predicts, at every cell of every level, A objectness logits and A x 4 anchor deltas
with two 1x1 convs (``objectness_logits``, ``anchor_deltas``) shared across levels. They differ
in the tower before the predictors:

* :class:`StandardRPNHead`: one 3x3 conv + ReLU per level (``conv``; cvpods / detectron2 names).
* :class:`FixRPNHead`: ``NUM_CONVS // 2`` stages of scale fusion across the FPN levels + a
  residual depth cell (:class:`~cvpods.layers.HeadStage`), the static deep baseline.
* :class:`DynamicRPNHead`: the same stages with spatial gates on every unit
  (:class:`~cvpods.layers.DynamicHeadStage`); it returns the head's per-image cost and, in
  evaluation, computes the gated depth cells with the masked convolution (sparse inference).

Each head takes keyword arguments, or a config (``FixRPNHead(cfg, input_shape, num_cell_anchors)``,
read by its ``from_config``). :data:`RPN_HEAD_REGISTRY` names them; MODEL.RPN.HEAD_NAME selects one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...configs import configurable
from ...layers import CostCollector, DynamicHeadStage, GateCost, HeadStage, ShapeSpec
from ...utils.registry import Registry

#: RPN heads by name; ``MODEL.RPN.HEAD_NAME`` picks the one the :class:`~.rpn.RPN` builds.
RPN_HEAD_REGISTRY = Registry("RPN head", "MODEL.RPN.HEAD_NAME")


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
    """``objectness_logits`` and ``anchor_deltas`` 1x1 convs, weights ~N(0, 0.01), biases 0.

    Args (keyword-only, shared by every RPN head):
        input_shape: one :class:`~cvpods.layers.ShapeSpec` per level, finest first, all with
            the same channel count C; their strides are kept as ``fpn_strides``.
        num_cell_anchors: anchors per cell of each level (the same A on every level).
    """

    def __init__(self, *, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> None:
        super().__init__()
        self.in_channels = _single_channel_count(input_shape)
        self.num_anchors = _single_anchor_count(num_cell_anchors)
        # Strides of the levels, finest first (the demo's gate maps and tools/head_flops.py).
        self.fpn_strides = [s.stride for s in input_shape]

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> dict:
        """The shared keyword arguments (the standard head reads nothing from MODEL.RPN)."""
        return dict(input_shape=list(input_shape), num_cell_anchors=list(num_cell_anchors))

    def build_predictors(self, box_dim: int = 4) -> None:
        """Create the ``objectness_logits`` and ``anchor_deltas`` convs (box_dim numbers per anchor)."""
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
        """The predictions of the tower outputs (per level ``[N, C, H_l, W_l]``), with the
        head's ``cost`` and gate maps passed through (see :class:`RPNHeadOutputs`)."""
        return RPNHeadOutputs(
            [self.objectness_logits(x) for x in towers],
            [self.anchor_deltas(x) for x in towers],
            cost,
            gate_maps,
            fusion_gate_maps,
        )


@RPN_HEAD_REGISTRY.register()
class StandardRPNHead(_RPNPredictors):
    """cvpods' RPN head: ``relu(conv3x3(x))`` then the two predictors, on every level.

    Keyword arguments: ``input_shape``, ``num_cell_anchors`` (see ``_RPNPredictors``); or
    ``StandardRPNHead(cfg, input_shape, num_cell_anchors)``.
    """

    @configurable
    def __init__(self, *, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> None:
        super().__init__(input_shape=input_shape, num_cell_anchors=num_cell_anchors)
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


def _num_stages(num_convs: int) -> int:
    if num_convs < 2 or num_convs % 2:
        raise ValueError(
            "MODEL.RPN.NUM_CONVS must be a positive even number for the deep RPN heads (each "
            f"stage is a depth cell of two convs), got {num_convs}"
        )
    return num_convs // 2


@RPN_HEAD_REGISTRY.register()
class FixRPNHead(_RPNPredictors):
    """Static deep RPN head: ``num_convs // 2`` stages (scale fusion + residual cell) in ``subnet``.

    Keyword arguments: ``input_shape``, ``num_cell_anchors``, ``num_convs`` (a positive even
    number), ``resize_method`` (``"bilinear"`` / ``"nearest"``) and ``norm`` (the units' norm,
    e.g. ``"GN"``); or ``FixRPNHead(cfg, input_shape, num_cell_anchors)`` (MODEL.RPN.NUM_CONVS,
    RESIZE_METHOD, NORM).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_cell_anchors: list[int],
        num_convs: int,
        resize_method: str,
        norm: str,
    ) -> None:
        super().__init__(input_shape=input_shape, num_cell_anchors=num_cell_anchors)
        self.subnet = nn.ModuleList(
            [
                HeadStage(self.in_channels, resize_method, norm)
                for _ in range(_num_stages(num_convs))
            ]
        )
        self.build_predictors()

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> dict:
        """The shared arguments plus MODEL.RPN.NUM_CONVS, RESIZE_METHOD and NORM."""
        rpn = cfg.MODEL.RPN
        return {
            **super().from_config(cfg, input_shape, num_cell_anchors),
            "num_convs": rpn.NUM_CONVS,
            "resize_method": rpn.RESIZE_METHOD,
            "norm": rpn.NORM,
        }

    def forward(
        self, features: list[torch.Tensor], return_gate_maps: bool = False
    ) -> RPNHeadOutputs:
        """``features``: FPN levels ``[N, C, H_l, W_l]``, finest first (no gate maps: static)."""
        levels = list(features)
        for stage in self.subnet:
            levels = stage(levels)
        return self.predict(levels)

    def cost_per_position(self) -> float:
        """MACs per location of the stages with every unit computed (the full cost)."""
        return sum(stage.cost_per_position() for stage in self.subnet)


@RPN_HEAD_REGISTRY.register()
class DynamicRPNHead(_RPNPredictors):
    """Fine-grained dynamic RPN head: :class:`FixRPNHead` with a spatial gate on every unit.

    Keyword arguments: those of :class:`FixRPNHead`, ``num_groups`` (gate maps per unit; must
    divide C), ``gate_activation`` and ``gate_activation_kwargs``; or
    ``DynamicRPNHead(cfg, input_shape, num_cell_anchors)`` (MODEL.RPN.NUM_CONVS, NUM_GROUPS,
    GATE_ACTIVATION, GATE_ACTIVATION_KARGS, RESIZE_METHOD, NORM). The outputs carry the
    per-image cost (soft / used / full MACs).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_cell_anchors: list[int],
        num_convs: int,
        resize_method: str,
        norm: str,
        num_groups: int,
        gate_activation: str,
        gate_activation_kwargs: dict | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, num_cell_anchors=num_cell_anchors)
        if self.in_channels % num_groups:
            raise ValueError(
                f"MODEL.RPN.NUM_GROUPS={num_groups} must divide the head's {self.in_channels} channels"
            )
        self.subnet = nn.ModuleList(
            [
                DynamicHeadStage(
                    self.in_channels,
                    num_groups=num_groups,
                    resize_method=resize_method,
                    norm=norm,
                    gate_activation=gate_activation,
                    gate_activation_kwargs=dict(gate_activation_kwargs or {}),
                )
                for _ in range(_num_stages(num_convs))
            ]
        )
        self.build_predictors()

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> dict:
        """The arguments of :meth:`FixRPNHead.from_config` plus the gates' (MODEL.RPN.NUM_GROUPS,
        GATE_ACTIVATION, GATE_ACTIVATION_KARGS)."""
        rpn = cfg.MODEL.RPN
        return {
            **super().from_config(cfg, input_shape, num_cell_anchors),
            "num_convs": rpn.NUM_CONVS,
            "resize_method": rpn.RESIZE_METHOD,
            "norm": rpn.NORM,
            "num_groups": rpn.NUM_GROUPS,
            "gate_activation": rpn.GATE_ACTIVATION,
            "gate_activation_kwargs": dict(rpn.GATE_ACTIVATION_KARGS),
        }

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
        """MACs per location of the stages with every unit computed (the full cost)."""
        return sum(stage.cost_per_position() for stage in self.subnet)


def build_rpn_head(cfg, input_shape: list[ShapeSpec], num_cell_anchors: list[int]) -> nn.Module:
    """The head named by MODEL.RPN.HEAD_NAME (in :data:`RPN_HEAD_REGISTRY`), built from ``cfg``
    for the levels ``input_shape`` with ``num_cell_anchors`` anchors per cell on each level.

    Raises:
        ConfigError (a ValueError): the name is not registered.
    """
    return RPN_HEAD_REGISTRY.get(cfg.MODEL.RPN.HEAD_NAME)(cfg, input_shape, num_cell_anchors)
