"""One stage of the deep FCOS / RPN heads: scale fusion across pyramid levels, then a depth cell.

A deep head is a stack of stages shared by all levels. In a stage, each level ``l`` first takes in
its neighbours (:mod:`cvpods.layers.scale_fusion`: units on levels ``l - 1`` and ``l + 1``, resized
to level ``l`` and summed with its own map), then goes through a residual depth cell
(:mod:`cvpods.layers.depth_cell`). :class:`HeadStage` is the fixed head's stage,
:class:`DynamicHeadStage` the dynamic head's (every unit and cell gated by a spatial gate).
"""

from __future__ import annotations

import torch
from torch import nn

from cvpods._extension import get_extension

from .depth_cell import DynamicDepthCell, ResidualCell
from .scale_fusion import (
    NUM_ADJACENT_LEVELS,
    GatedDepthwiseUnit,
    depthwise_unit,
    depthwise_unit_cost,
    make_resize,
    neighbour_sum,
)
from .spatial_gate import CostCollector, gate_logits


class HeadStage(nn.Module):
    """One stage of the fixed deep head: static scale fusion, then a :class:`ResidualCell` per level."""

    def __init__(self, channels: int, resize_method: str = "bilinear", norm: str = "GN") -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [depthwise_unit(channels, norm) for _ in range(NUM_ADJACENT_LEVELS)]
        )
        self.depth_module = ResidualCell(channels, norm)
        self.output_weight = nn.Parameter(torch.ones(1))
        self.resize = make_resize(resize_method)

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        sums = neighbour_sum(levels, lambda unit, l: self.convs[unit](levels[l]), self.resize)
        return [self.depth_module(s + x * self.output_weight) for s, x in zip(sums, levels)]

    def cost_per_position(self) -> float:
        """MACs per position of one level: both fusion units and the depth cell."""
        return (
            NUM_ADJACENT_LEVELS * depthwise_unit_cost(self.convs[0])
            + self.depth_module.cost_per_position()
        )


class DynamicHeadStage(nn.Module):
    """One stage of the dynamic head: gated scale fusion, then a :class:`DynamicDepthCell` per level."""

    def __init__(
        self,
        channels: int,
        num_groups: int = 1,
        resize_method: str = "bilinear",
        norm: str = "GN",
        gate_activation: str = "ReTanH",
        gate_activation_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        gate_args = dict(
            num_groups=num_groups,
            norm=norm,
            gate_activation=gate_activation,
            gate_activation_kwargs=gate_activation_kwargs,
        )
        self.dynamic_convs = nn.ModuleList(
            [GatedDepthwiseUnit(channels, **gate_args) for _ in range(NUM_ADJACENT_LEVELS)]
        )
        self.depth_module = DynamicDepthCell(channels, **gate_args)
        self.scale_weight = nn.Parameter(torch.zeros(1))
        self.output_weight = nn.Parameter(torch.ones(1))
        self.resize_method = resize_method
        self.resize = make_resize(resize_method)

    def forward(
        self, levels: list[torch.Tensor], costs: CostCollector | None = None
    ) -> list[torch.Tensor]:
        # Every unit's gate is evaluated (and costed) on every level, as in the release; the unit
        # itself only where a neighbour reads it. The units' gates read the same input: one
        # convolution per level computes both.
        units = self.dynamic_convs
        per_level = [gate_logits([unit.gate for unit in units], x) for x in levels]
        gates = [[unit.gate(x, logits[i]) for x, logits in zip(levels, per_level)]
                 for i, unit in enumerate(units)]  # fmt: skip
        if costs is not None:
            for unit, unit_gates in zip(units, gates):
                for level, gate in enumerate(unit_gates):
                    unit.add_cost(costs, gate)
                    costs.add_fusion_gate(level, gate)
        if self._fused_sum(levels[0]):
            fused = self._fused_neighbour_sums(levels, gates)
            return [self.depth_module(f, costs, level) for level, f in enumerate(fused)]
        sums = neighbour_sum(
            levels, lambda unit, l: units[unit](levels[l], gates[unit][l]), self.resize
        )
        if self.training:
            fused = [s * self.scale_weight + x * self.output_weight for s, x in zip(sums, levels)]
        else:  # the same sums, in place on the (fresh) neighbour sums: fewer passes over the maps
            fused = [
                x * self.output_weight
                if isinstance(s, float)  # a level without neighbours (a one-level pyramid)
                else s.mul_(self.scale_weight).addcmul_(x, self.output_weight)
                for s, x in zip(sums, levels)
            ]
        return [self.depth_module(f, costs, level) for level, f in enumerate(fused)]

    def _fused_sum(self, x: torch.Tensor) -> bool:
        """Whether the compiled one-pass neighbour sum applies (CPU inference, bilinear)."""
        return (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and self.resize_method == "bilinear"
            and get_extension() is not None
        )

    def _fused_neighbour_sums(
        self, levels: list[torch.Tensor], gates: list[list[torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Per level ``l``: ``x_l * output_weight + scale_weight * (resize(unit 0 of level l-1)
        + resize(unit 1 of level l+1))``, each level one ``torch.ops.cvpods.fuse_neighbours``
        call (one pass over the maps). A unit's output is read by one level only: it is
        computed just before that level's sum and freed after it, which keeps few full-size
        maps alive at once."""
        units = self.dynamic_convs
        fused = []
        for l, x in enumerate(levels):
            # The units write only where their gate is open; the sum skips the closed pixels.
            finer_gate = gates[0][l - 1] if l > 0 else None
            coarser_gate = gates[1][l + 1] if l + 1 < len(levels) else None
            finer = None if finer_gate is None else units[0](levels[l - 1], finer_gate, False)
            coarser = None if coarser_gate is None else units[1](levels[l + 1], coarser_gate, False)
            fused.append(
                torch.ops.cvpods.fuse_neighbours(
                    x, finer, coarser, self.scale_weight, self.output_weight, finer_gate,
                    coarser_gate,
                )
            )  # fmt: skip
            del finer, coarser
        return fused

    def cost_per_position(self) -> float:
        unit = depthwise_unit_cost(self.dynamic_convs[0].convs)
        return NUM_ADJACENT_LEVELS * unit + sum(self.depth_module.bottleneck.conv_costs())
