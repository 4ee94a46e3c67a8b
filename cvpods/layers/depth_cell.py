"""Depth cells: the residual units stacked in the deep FCOS heads.

A cell is ``relu(branch(x) + x)`` with ``branch = conv2(relu(conv1(x)))``, both 3x3 convs with
GroupNorm and no bias. The dynamic cell multiplies the branch by a spatial gate; where the gate is
0 the cell is the identity, so at inference the branch is computed only where it is needed:
``conv2`` where the gate is non-zero and ``conv1`` on the 3x3-dilated gate (what ``conv2`` reads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batch_norm import get_norm
from .masked_conv import MaskedEpilogue, masked_conv2d
from .spatial_gate import CostCollector, GateCost, SpatialGate
from .weight_init import init_head_layers
from .wrappers import Conv2d


def dilated_gate(gate: torch.Tensor) -> torch.Tensor:
    """``[N, G, H, W]`` -> ``[N, 1, H, W]``: each position's largest gate value over its 3x3
    neighbourhood and the gate maps: how much of a depth cell's conv1 (which conv2 reads in a 3x3
    window) a position needs."""
    pooled = F.max_pool2d(gate, kernel_size=3, stride=1, padding=1)
    # With one gate map (the release's setting) the maximum over the maps is the map itself: no
    # extra pass over it, nor over its gradient in training.
    return pooled if gate.shape[1] == 1 else pooled.amax(dim=1, keepdim=True)


class ResidualBranch(nn.Module):
    """``conv2(relu(conv1(x)))`` with 3x3 convs + norm, ``channels`` in and out."""

    def __init__(self, channels: int, norm: str = "GN") -> None:
        super().__init__()
        self.conv1 = Conv2d(
            channels, channels, 3, padding=1, bias=False, norm=get_norm(norm, channels)
        )
        self.conv2 = Conv2d(
            channels, channels, 3, padding=1, bias=False, norm=get_norm(norm, channels)
        )
        init_head_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))

    def conv_costs(self) -> tuple[float, float]:
        """MACs per output position of conv1 and conv2 (a norm layer adds one MAC per channel)."""
        costs = []
        for conv in (self.conv1, self.conv2):
            macs = conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
            costs.append(float(macs + (conv.out_channels if conv.norm is not None else 0)))
        return costs[0], costs[1]

    @torch.no_grad()
    def sparse_forward(
        self,
        x: torch.Tensor,
        conv1_mask: torch.Tensor,
        conv2_mask: torch.Tensor,
        gate: torch.Tensor | None = None,
        conv1_mask_is_dilated: bool = False,
    ) -> torch.Tensor:
        """The branch computed only at masked positions (``[N, H, W]`` bool masks).

        Without ``gate``: the branch, zeros elsewhere. With ``gate [N, G, H, W]``: the whole gated
        cell ``relu(x + gate * branch)`` (``relu(x)`` where the branch is not computed), fused into
        the second convolution's epilogue. GroupNorm statistics are taken over each image's
        computed positions only. Outputs are channels-last. ``conv1_mask_is_dilated``: the
        caller guarantees that ``conv1_mask`` covers the 3x3 neighbourhood of every position of
        ``conv2_mask`` (as the dynamic cell's dilated gate does), so conv1's output is written
        at its active positions only (conv2 reads nothing else).
        """
        out = masked_conv2d(
            x, conv1_mask, self.conv1.weight, None, 1, _epilogue(self.conv1, relu=True),
            zero_inactive=not conv1_mask_is_dilated,
        )  # fmt: skip
        post = _epilogue(self.conv2, relu=False)
        if gate is None:
            return masked_conv2d(out, conv2_mask, self.conv2.weight, None, 1, post)
        return masked_conv2d(
            out, conv2_mask, self.conv2.weight, None, 1, post, residual=x, gate=gate
        )


def _epilogue(conv: Conv2d, relu: bool) -> MaskedEpilogue:
    if isinstance(conv.norm, nn.GroupNorm):
        return MaskedEpilogue.from_group_norm(conv.norm, relu=relu)
    if conv.norm is not None:
        raise ValueError(
            f"the sparse depth cell supports GroupNorm or no norm, not {type(conv.norm).__name__}"
        )
    return MaskedEpilogue(relu=relu)


class ResidualCell(nn.Module):
    """Static depth cell ``relu(branch(x) + x)`` (the fixed deep head)."""

    def __init__(self, channels: int, norm: str = "GN") -> None:
        super().__init__()
        self.bottleneck = ResidualBranch(channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bottleneck(x) + x)

    def cost_per_position(self) -> float:
        return sum(self.bottleneck.conv_costs())


class DynamicDepthCell(nn.Module):
    """Gated depth cell ``relu(gate * branch(x) + x)``; the gate is a 3x3 conv of ``x``.

    Training computes the branch densely (gradients reach the gate). Evaluation computes it with
    masked convolutions at the positions the gate needs (no gradient).
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
        self.bottleneck = ResidualBranch(channels, norm)
        self.gate = SpatialGate(channels, num_groups, gate_activation, gate_activation_kwargs)

    def cost(self, gate: torch.Tensor) -> GateCost:
        """conv2 costs where the gate is open, conv1 where the 3x3-dilated gate is open."""
        collector = CostCollector()
        self.add_cost(collector, gate)
        return collector.total

    def add_cost(
        self, costs: CostCollector, gate: torch.Tensor, dilated: torch.Tensor | None = None
    ) -> None:
        """Add :meth:`cost` of ``gate [N, G, H, W]`` to ``costs`` (``dilated``: its
        :func:`dilated_gate`, when the caller has it already)."""
        conv1_cost, conv2_cost = self.bottleneck.conv_costs()
        costs.add_unit(gate, conv2_cost)
        costs.add_unit(dilated_gate(gate) if dilated is None else dilated, conv1_cost)

    def forward(
        self, x: torch.Tensor, costs: CostCollector | None = None, level: int = 0
    ) -> torch.Tensor:
        """The gated cell on ``x [N, C, H, W]`` (same shape out).

        Args:
            x: one pyramid level's feature map.
            costs: receives the cell's :class:`GateCost` and (when it keeps them) its gate map.
            level: index of ``x``'s pyramid level (finest first), for the recorded gate map.
        """
        gate = self.gate(x)
        dilated = dilated_gate(gate)
        if costs is not None:
            self.add_cost(costs, gate, dilated)
            costs.add_depth_gate(level, gate)
        if self.training:
            return F.relu(self.gate.modulate(self.bottleneck(x), gate) + x)
        # Gates are >= 0: the dilated gate is non-zero exactly on the 3x3 neighbourhoods of the
        # open positions, where conv2 reads conv1.
        open_ = (gate.detach() != 0).any(dim=1)
        return self.bottleneck.sparse_forward(
            x, dilated.detach()[:, 0] > 0, open_, gate=gate, conv1_mask_is_dilated=True
        )
