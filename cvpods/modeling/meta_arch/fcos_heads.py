"""FCOS heads: the classic FCOS head, the fixed deep head and the fine-grained dynamic head.

All three share the predictors: ``cls_score`` (K logits), ``bbox_pred`` (l, t, r, b) and
``centerness``, 3x3 convs applied to each level's tower output, plus a learnable scale per level.
They differ in the towers (``cls_subnet`` / ``bbox_subnet``):

* :class:`FCOSHead`: per level, ``NUM_CONVS`` x (3x3 conv + GN + ReLU). Depth "D2" at NUM_CONVS=4.
* :class:`FCOSFixHead`: ``NUM_CONVS // 2`` stages of (scale fusion + residual depth cell) across
  levels: D4 at NUM_CONVS=8, D8 at 16. The static baseline of the paper.
* :class:`FCOSDynamicHead`: the same topology with spatial gates on every unit (fine-grained
  dynamic routing in scale and depth); it also returns the head's per-image cost.

Each head takes explicit keyword arguments, or a config (``FCOSHead(cfg, input_shape)``, read by
its ``from_config``). They are registered in :data:`FCOS_HEAD_REGISTRY` under their class names;
MODEL.FCOS.HEAD_NAME selects one (default ``"FCOSHead"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...configs import configurable
from ...layers import (
    CostCollector,
    DynamicHeadStage,
    GateCost,
    HeadStage,
    Scale,
    ShapeSpec,
    init_head_layers,
)
from ...layers.batch_norm import GN_NUM_GROUPS
from ...layers.few_output_conv import stacked_conv3x3
from ...utils.parallel import can_run_side_by_side, run_side_by_side
from ...utils.registry import Registry

#: FCOS heads by name; ``MODEL.FCOS.HEAD_NAME`` picks the one :class:`~cvpods.modeling.FCOS` builds.
FCOS_HEAD_REGISTRY = Registry("FCOS head", "MODEL.FCOS.HEAD_NAME")


@dataclass
class FCOSHeadOutputs:
    """Per level ``l`` (strides 8..128): ``logits [N, K, h_l, w_l]``, ``bbox_reg [N, 4, h_l, w_l]``
    (l, t, r, b in input pixels), ``centerness [N, 1, h_l, w_l]`` (logits); ``cost`` is the
    dynamic head's per-image cost (None for static heads); ``gate_maps`` (dynamic head, on
    request) per level ``[N, h_l, w_l]``: the fraction of depth cells computed at each position;
    ``fusion_gate_maps`` (likewise): the fraction of scale-fusion units computed there."""

    logits: list[torch.Tensor]
    bbox_reg: list[torch.Tensor]
    centerness: list[torch.Tensor]
    cost: GateCost | None = None
    gate_maps: list[torch.Tensor] | None = None
    fusion_gate_maps: list[torch.Tensor] | None = None


class _FCOSPredictors(nn.Module):
    """The predictors and per-level scales shared by every FCOS head.

    Args (keyword-only, shared by every head):
        input_shape: one :class:`~cvpods.layers.ShapeSpec` per level, finest first; every
            level has the same channel count C (the head's width).
        num_classes: K, the number of foreground classes (sigmoid logits, no background).
        fpn_strides: the stride of each level in input pixels (one per ``input_shape`` entry).
        num_convs: convs per branch (FCOSHead: its depth; deep heads: 2 per stage).
        prior_prob: (the heads', for :meth:`build_predictors`) initial foreground probability
            of every class logit.
        centerness_on_reg: predict centerness from the regression tower (else the class tower).
        norm_reg_targets: regress ``relu(x) * stride`` (else ``exp(x)``).
    """

    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_classes: int,
        fpn_strides: list[int],
        num_convs: int,
        centerness_on_reg: bool = False,
        norm_reg_targets: bool = False,
    ) -> None:
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(
                f"FCOS heads need the same channel count on every level, got {channels}"
            )
        self.in_channels = channels.pop()
        self.num_classes = num_classes
        self.fpn_strides = list(fpn_strides)
        if len(self.fpn_strides) != len(input_shape):
            raise ValueError(
                f"MODEL.FCOS.FPN_STRIDES has {len(self.fpn_strides)} entries but the head gets "
                f"{len(input_shape)} levels (MODEL.FCOS.IN_FEATURES)"
            )
        self.centerness_on_reg = centerness_on_reg
        self.norm_reg_targets = norm_reg_targets
        self.num_convs = num_convs

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec]) -> dict:
        """The keyword arguments of the head from MODEL.FCOS, for the levels ``input_shape``."""
        fcos = cfg.MODEL.FCOS
        return dict(
            input_shape=list(input_shape),
            num_classes=fcos.NUM_CLASSES,
            fpn_strides=list(fcos.FPN_STRIDES),
            num_convs=fcos.NUM_CONVS,
            prior_prob=fcos.PRIOR_PROB,
            centerness_on_reg=fcos.CENTERNESS_ON_REG,
            norm_reg_targets=fcos.NORM_REG_TARGETS,
        )

    def build_predictors(self, prior_prob: float) -> None:
        """Create ``cls_score``, ``bbox_pred``, ``centerness`` (3x3 convs) and ``scales``."""
        c = self.in_channels
        self.cls_score = nn.Conv2d(c, self.num_classes, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, kernel_size=3, padding=1)
        self.centerness = nn.Conv2d(c, 1, kernel_size=3, padding=1)
        for conv in (self.cls_score, self.bbox_pred, self.centerness):
            init_head_layers(conv)
        # Start with every location predicting background with probability 1 - prior_prob.
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.fpn_strides])

    def predict(
        self,
        cls_towers: list[torch.Tensor],
        bbox_towers: list[torch.Tensor],
        cost: GateCost | None = None,
        gate_maps: list[torch.Tensor] | None = None,
        fusion_gate_maps: list[torch.Tensor] | None = None,
    ) -> FCOSHeadOutputs:
        """The predictions of the towers' outputs (per level ``[N, C, h_l, w_l]``), with the
        head's ``cost`` and gate maps passed through (see :class:`FCOSHeadOutputs`).

        The predictors reading the same tower output run as one few-output convolution
        (:func:`~cvpods.layers.few_output_conv.stacked_conv3x3`: in training on CPU, a 1x1
        convolution and a fold of the taps, the same function faster; else each conv)."""
        logits, bbox_reg, centerness = [], [], []
        if self.centerness_on_reg:
            cls_convs, bbox_convs = [self.cls_score], [self.bbox_pred, self.centerness]
        else:
            cls_convs, bbox_convs = [self.cls_score, self.centerness], [self.bbox_pred]
        for level, (cls_feat, bbox_feat) in enumerate(zip(cls_towers, bbox_towers)):
            cls_out = stacked_conv3x3(cls_convs, cls_feat)
            bbox_out = stacked_conv3x3(bbox_convs, bbox_feat)
            logits.append(cls_out[0])
            centerness.append(bbox_out[1] if self.centerness_on_reg else cls_out[1])
            reg = self.scales[level](bbox_out[0])
            if self.norm_reg_targets:
                bbox_reg.append(F.relu(reg) * self.fpn_strides[level])
            else:
                bbox_reg.append(torch.exp(reg))
        return FCOSHeadOutputs(logits, bbox_reg, centerness, cost, gate_maps, fusion_gate_maps)


@FCOS_HEAD_REGISTRY.register()
class FCOSHead(_FCOSPredictors):
    """The FCOS head: ``num_convs`` x (3x3 conv + GN + ReLU) per branch, shared across levels.

    Keyword arguments: those of the shared predictors (see ``_FCOSPredictors``); or
    ``FCOSHead(cfg, input_shape)``.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_classes: int,
        fpn_strides: list[int],
        num_convs: int,
        prior_prob: float,
        centerness_on_reg: bool = False,
        norm_reg_targets: bool = False,
    ) -> None:
        super().__init__(
            input_shape=input_shape,
            num_classes=num_classes,
            fpn_strides=fpn_strides,
            num_convs=num_convs,
            centerness_on_reg=centerness_on_reg,
            norm_reg_targets=norm_reg_targets,
        )
        self.cls_subnet = self._tower()
        self.bbox_subnet = self._tower()
        init_head_layers(self)
        self.build_predictors(prior_prob)

    def _tower(self) -> nn.Sequential:
        c = self.in_channels
        layers: list[nn.Module] = []
        for _ in range(self.num_convs):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(GN_NUM_GROUPS, c), nn.ReLU()]
        return nn.Sequential(*layers)

    def forward(
        self, features: list[torch.Tensor], return_gate_maps: bool = False
    ) -> FCOSHeadOutputs:
        """``features``: FPN levels ``[N, C, h_l, w_l]``, finest first (a static head has no gate
        maps: ``return_gate_maps`` is accepted and ignored)."""
        return self.predict(
            [self.cls_subnet(f) for f in features], [self.bbox_subnet(f) for f in features]
        )

    def cost_per_position(self) -> float:
        """MACs per location of both towers (3x3 convs and GN, as the release counts them)."""
        c = self.in_channels
        return 2.0 * self.num_convs * (c * c * 9 + c)


def _num_stages(num_convs: int) -> int:
    if num_convs < 2 or num_convs % 2:
        raise ValueError(
            f"MODEL.FCOS.NUM_CONVS must be a positive even number for the deep heads (each stage is "
            f"a depth cell of two convs), got {num_convs}"
        )
    return num_convs // 2


@FCOS_HEAD_REGISTRY.register()
class FCOSFixHead(_FCOSPredictors):
    """Fixed deep head: ``num_convs // 2`` (scale fusion + residual cell) stages per branch.

    Keyword arguments: those of :class:`FCOSHead` (``num_convs`` a positive even number) and
    ``resize_method`` (``"bilinear"`` or ``"nearest"``: how a stage brings neighbouring levels
    to a level's size); or ``FCOSFixHead(cfg, input_shape)``.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_classes: int,
        fpn_strides: list[int],
        num_convs: int,
        prior_prob: float,
        resize_method: str,
        centerness_on_reg: bool = False,
        norm_reg_targets: bool = False,
    ) -> None:
        super().__init__(
            input_shape=input_shape,
            num_classes=num_classes,
            fpn_strides=fpn_strides,
            num_convs=num_convs,
            centerness_on_reg=centerness_on_reg,
            norm_reg_targets=norm_reg_targets,
        )
        stages = _num_stages(num_convs)
        resize = resize_method
        self.cls_subnet = nn.ModuleList(
            [HeadStage(self.in_channels, resize) for _ in range(stages)]
        )
        self.bbox_subnet = nn.ModuleList(
            [HeadStage(self.in_channels, resize) for _ in range(stages)]
        )
        self.build_predictors(prior_prob)

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec]) -> dict:
        """The shared keys of MODEL.FCOS plus RESIZE_METHOD."""
        return {
            **super().from_config(cfg, input_shape),
            "resize_method": cfg.MODEL.FCOS.RESIZE_METHOD,
        }

    def forward(
        self, features: list[torch.Tensor], return_gate_maps: bool = False
    ) -> FCOSHeadOutputs:
        """``features``: FPN levels ``[N, C, h_l, w_l]``, finest first (no gate maps: static)."""
        cls_levels, bbox_levels = list(features), list(features)
        for cls_stage, bbox_stage in zip(self.cls_subnet, self.bbox_subnet):
            cls_levels = cls_stage(cls_levels)
            bbox_levels = bbox_stage(bbox_levels)
        return self.predict(cls_levels, bbox_levels)

    def cost_per_position(self) -> float:
        """MACs per location of both towers with every unit computed (the full cost)."""
        return sum(stage.cost_per_position() for stage in [*self.cls_subnet, *self.bbox_subnet])


@FCOS_HEAD_REGISTRY.register()
class FCOSDynamicHead(_FCOSPredictors):
    """Fine-grained dynamic head: the fixed deep head with a spatial gate on every unit.

    Keyword arguments: those of :class:`FCOSFixHead`, and ``num_groups`` (gate maps per unit;
    must divide the channel count), ``gate_activation`` (``"ReTanH"``, ``"GeReTanH"`` or
    ``"Sigmoid"``) and ``gate_activation_kwargs`` (e.g. ``{"tau": 1.5}`` for GeReTanH); or
    ``FCOSDynamicHead(cfg, input_shape)`` (MODEL.FCOS.NUM_GROUPS, GATE_ACTIVATION,
    GATE_ACTIVATION_KARGS, RESIZE_METHOD). The outputs carry the head's per-image cost
    (:class:`~cvpods.layers.GateCost`, MACs).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_classes: int,
        fpn_strides: list[int],
        num_convs: int,
        prior_prob: float,
        resize_method: str,
        num_groups: int,
        gate_activation: str,
        gate_activation_kwargs: dict | None = None,
        centerness_on_reg: bool = False,
        norm_reg_targets: bool = False,
    ) -> None:
        super().__init__(
            input_shape=input_shape,
            num_classes=num_classes,
            fpn_strides=fpn_strides,
            num_convs=num_convs,
            centerness_on_reg=centerness_on_reg,
            norm_reg_targets=norm_reg_targets,
        )
        stages = _num_stages(num_convs)
        if self.in_channels % num_groups:
            raise ValueError(
                f"MODEL.FCOS.NUM_GROUPS={num_groups} must divide the head's {self.in_channels} channels"
            )

        def stage() -> DynamicHeadStage:
            return DynamicHeadStage(
                self.in_channels,
                num_groups=num_groups,
                resize_method=resize_method,
                gate_activation=gate_activation,
                gate_activation_kwargs=dict(gate_activation_kwargs or {}),
            )

        self.cls_subnet = nn.ModuleList([stage() for _ in range(stages)])
        self.bbox_subnet = nn.ModuleList([stage() for _ in range(stages)])
        self.build_predictors(prior_prob)
        #: CPU inference with two or more intra-op threads runs the two towers side by side
        #: (:func:`~cvpods.utils.parallel.run_side_by_side`), each with half of the threads: the
        #: same outputs, up to the float rounding of a different thread count. False: one after
        #: the other, all threads for each.
        self.towers_side_by_side = True

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec]) -> dict:
        """The keys of :meth:`FCOSFixHead.from_config` plus the gates' (NUM_GROUPS,
        GATE_ACTIVATION, GATE_ACTIVATION_KARGS)."""
        fcos = cfg.MODEL.FCOS
        return {
            **super().from_config(cfg, input_shape),
            "resize_method": fcos.RESIZE_METHOD,
            "num_groups": fcos.NUM_GROUPS,
            "gate_activation": fcos.GATE_ACTIVATION,
            "gate_activation_kwargs": dict(fcos.GATE_ACTIVATION_KARGS),
        }

    def forward(
        self, features: list[torch.Tensor], return_gate_maps: bool = False
    ) -> FCOSHeadOutputs:
        """``features``: FPN levels ``[N, C, h_l, w_l]``, finest first. The outputs carry the
        per-image cost and, with ``return_gate_maps``, the depth cells' and the scale-fusion
        units' gate maps."""
        if not self.training:  # the sparse inference path reads and writes channels-last maps
            features = [f.contiguous(memory_format=torch.channels_last) for f in features]

        def tower(stages: nn.ModuleList) -> tuple[list[torch.Tensor], CostCollector]:
            costs = CostCollector(keep_gate_maps=return_gate_maps)
            levels = list(features)
            for stage in stages:
                levels = stage(levels, costs)
            return levels, costs

        if self.towers_side_by_side and not self.training and can_run_side_by_side(features[0]):
            (cls_levels, costs), (bbox_levels, bbox_costs) = run_side_by_side(
                lambda: tower(self.cls_subnet), lambda: tower(self.bbox_subnet)
            )
        else:
            (cls_levels, costs), (bbox_levels, bbox_costs) = (
                tower(self.cls_subnet),
                tower(self.bbox_subnet),
            )
        costs.extend(bbox_costs)  # the classification tower's units first, as they were added
        return self.predict(
            cls_levels, bbox_levels, costs.total, costs.gate_maps(), costs.fusion_gate_maps()
        )

    def cost_per_position(self) -> float:
        """MACs per location of both towers with every unit computed (the full cost)."""
        return sum(stage.cost_per_position() for stage in [*self.cls_subnet, *self.bbox_subnet])
