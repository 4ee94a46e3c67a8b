"""Scale fusion: each pyramid level takes in its two neighbours before its depth cell.

For output level ``l``, unit 0 (a depthwise 3x3 conv + GroupNorm) is applied to the finer level
``l - 1`` and unit 1 to the coarser level ``l + 1`` (where they exist); both results are resized
to level ``l`` (bilinear, align_corners=True) and summed. The static fusion outputs
``sum + x_l * output_weight``, the dynamic one ``sum * scale_weight + x_l * output_weight``
(learned scalars, initialised to 0 and 1), where each unit is multiplied by its own spatial gate.
The stages that combine the fusion with the depth cells are in :mod:`cvpods.layers.head_stage`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvpods._extension import get_extension

from .batch_norm import get_norm
from .spatial_gate import CostCollector, GateCost, SpatialGate
from .weight_init import init_head_layers

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
