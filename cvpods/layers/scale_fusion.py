"""Scale fusion: each pyramid level takes in its two neighbours before its depth cell.

For output level ``l``, unit 0 (a depthwise 3x3 conv + GroupNorm) is applied to the finer level
``l - 1`` and unit 1 to the coarser level ``l + 1`` (where they exist); both results are resized
to level ``l`` (bilinear, align_corners=True) and summed. The static fusion outputs
``sum + x_l * output_weight``, the dynamic one ``sum * scale_weight + x_l * output_weight``
(learned scalars, initialised to 0 and 1), where each unit is multiplied by its own spatial gate.
The level's depth cell follows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvpods._extension import get_extension

from .batch_norm import get_norm
from .depth_cell import DynamicDepthCell, ResidualCell, init_head_layers
from .spatial_gate import CostCollector, GateCost, SpatialGate, gate_logits

#: Units per stage: index 0 reads the finer neighbour, index 1 the coarser one.
NUM_ADJACENT_LEVELS = 2

RESIZE_METHODS = ("bilinear", "nearest")


def make_resize(method: str) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    if method == "bilinear":
        return lambda x, size: F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    if method == "nearest":
        return lambda x, size: F.interpolate(x, size=size, mode="nearest")
    raise ValueError(
        f"unknown MODEL.FCOS.RESIZE_METHOD {method!r}; expected one of {RESIZE_METHODS}"
    )


def depthwise_unit(channels: int, norm: str = "GN") -> nn.Sequential:
    """Depthwise 3x3 conv (with bias) + norm: ``convs.0`` / ``convs.1`` in the state dict."""
    layers = [nn.Conv2d(channels, channels, 3, padding=1, groups=channels)]
    norm_layer = get_norm(norm, channels)
    if norm_layer is not None:
        layers.append(norm_layer)
    unit = nn.Sequential(*layers)
    init_head_layers(unit)
    return unit


def neighbour_sum(
    levels: list[torch.Tensor],
    unit_output: Callable[[int, int], torch.Tensor],
    resize: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
) -> list[torch.Tensor | float]:
    """For each level l: resize(unit 0 of level l-1) + resize(unit 1 of level l+1), where present.

    ``unit_output(unit, level)`` computes a unit's output on a level (only those needed are asked).
    """
    sums: list[torch.Tensor | float] = []
    for l, x in enumerate(levels):
        total: torch.Tensor | float = 0.0
        for unit, source in ((0, l - 1), (1, l + 1)):
            if 0 <= source < len(levels):
                term = resize(unit_output(unit, source), x.shape[-2:])
                total = term if isinstance(total, float) else total + term
        sums.append(total)
    return sums


class ScaleFusion(nn.Module):
    """Static scale fusion + :class:`ResidualCell` (one stage of the fixed deep head)."""

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


def depthwise_unit_cost(unit: nn.Sequential) -> float:
    """MACs per position of a depthwise unit, counted as the official release counts them.

    The release multiplies the conv's ``C * k * k`` by the number of layers in the unit (conv and
    norm: 2) and adds ``C`` for the norm, i.e. ``2 * C * 9 + C`` for a 3x3 unit. Kept as is so that
    costs, budget losses and reported GFLOPs match the released models.
    """
    conv = unit[0]
    norm_cost = conv.out_channels if len(unit) > 1 else 0
    return float(
        conv.in_channels * len(unit) * conv.kernel_size[0] * conv.kernel_size[1] + norm_cost
    )


class GatedDepthwiseUnit(nn.Module):
    """A depthwise unit multiplied by a spatial gate computed from the unit's input.

    Its GroupNorm statistics come from the whole map, so the convolution is computed everywhere
    (it is cheap); only its cost is gated. At inference on CPU the unit, its norm and the gate are
    one compiled operator (``torch.ops.cvpods.gated_depthwise``) that writes the normalized output
    only where the gate is open.
    """

    def __init__(
        self,
        channels: int,
        num_groups: int = 1,
        norm: str = "GN",
        gate_activation: str = "ReTanH",
        gate_activation_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.convs = depthwise_unit(channels, norm)
        self.gate = SpatialGate(channels, num_groups, gate_activation, gate_activation_kwargs)

    def cost(self, gate: torch.Tensor) -> GateCost:
        collector = CostCollector()
        self.add_cost(collector, gate)
        return collector.total

    def add_cost(self, costs: CostCollector, gate: torch.Tensor) -> None:
        """Add :meth:`cost` of ``gate [N, G, H, W]`` to ``costs``."""
        # The release detaches these gates in the soft cost: the budget loss does not reach them.
        costs.add_unit(gate, depthwise_unit_cost(self.convs), detach_soft=True)

    def forward(
        self, x: torch.Tensor, gate: torch.Tensor, zero_closed: bool = True
    ) -> torch.Tensor:
        """``x [N, C, H, W]``, ``gate [N, G, H, W]`` -> the gated unit output ``[N, C, H, W]``.

        ``zero_closed=False``: where every gate map is 0 the compiled operator leaves the output
        unwritten, for a reader that skips those positions itself (``fuse_neighbours`` given
        the gate); other paths write the zeros anyway.
        """
        conv = self.convs[0]
        norm = self.convs[1] if len(self.convs) > 1 else None
        fused = (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and get_extension() is not None
            and (norm is None or isinstance(norm, nn.GroupNorm))
        )
        if not fused:
            return self.gate.modulate(self.convs(x), gate)
        return torch.ops.cvpods.gated_depthwise(
            x.contiguous(memory_format=torch.channels_last), conv.weight, conv.bias,
            0 if norm is None else norm.num_groups,
            None if norm is None else norm.weight, None if norm is None else norm.bias,
            1e-5 if norm is None else norm.eps, gate, zero_closed,
        )  # fmt: skip


class DynamicScaleFusion(nn.Module):
    """Gated scale fusion + :class:`DynamicDepthCell` (one stage of the dynamic head)."""

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
