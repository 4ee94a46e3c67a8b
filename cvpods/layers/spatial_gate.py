"""Spatial gates of the fine-grained dynamic head, and the accounting of what they save.

A spatial gate predicts, for every position of a unit's input, how much of the unit to compute:
``gate = activation(conv(input))`` with ``NUM_GROUPS`` gate maps (the unit's channels are split
evenly among them). The gated output is ``unit_output * gate``. With the ReTanH family a gate is
exactly 0 on a large part of the map, and those positions need not be computed at all.

Cost is counted in multiply-accumulates (MACs) per image, three ways:

* ``soft``: gate value x unit cost, summed over positions (differentiable: the budget loss);
* ``used``: (gate != 0) x unit cost: what the sparse inference path actually computes;
* ``full``: every position x unit cost: the static head of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cvpods._extension import get_extension

from .few_output_conv import stacked_conv3x3, uses_taps

GATE_ACTIVATIONS = ("ReTanH", "GeReTanH", "Sigmoid")

#: The gate value every gate starts at (the head starts as a fully computed one).
INITIAL_GATE_VALUE = 0.99


def _retanh(x: torch.Tensor) -> torch.Tensor:
    """``max(tanh(x), 0)``."""
    return torch.tanh(x).clamp(min=0)


def _geretanh(tau: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``max((tanh(x - tau) + tanh(tau)) / (1 + tanh(tau)), 0)``: ReTanH shifted by tau, rescaled to 1."""
    t = math.tanh(tau)

    def activate(x: torch.Tensor) -> torch.Tensor:
        return ((torch.tanh(x - tau) + t) / (1 + t)).clamp(min=0)

    return activate


def gate_activation(
    name: str, kwargs: dict | None = None
) -> tuple[Callable, Callable[[float], float]]:
    """The activation called ``name`` and its inverse on (0, 1) (used to initialise the bias)."""
    kwargs = dict(kwargs or {})
    if name == "ReTanH":
        return _retanh, math.atanh
    if name == "Sigmoid":
        return torch.sigmoid, lambda p: math.log(p / (1 - p))
    if name == "GeReTanH":
        if "tau" not in kwargs:
            raise ValueError(
                "MODEL.FCOS.GATE_ACTIVATION='GeReTanH' needs GATE_ACTIVATION_KARGS=dict(tau=...)"
            )
        tau = float(kwargs["tau"])
        t = math.tanh(tau)
        return _geretanh(tau), lambda p: tau + math.atanh(p * (1 + t) - t)
    raise ValueError(
        f"unknown MODEL.FCOS.GATE_ACTIVATION {name!r}; expected one of {GATE_ACTIVATIONS}"
    )


@dataclass
class GateCost:
    """Per-image head cost in MACs: each field is a ``[N]`` tensor (see the module docstring)."""

    soft: torch.Tensor
    used: torch.Tensor
    full: torch.Tensor

    def __add__(self, other: GateCost) -> GateCost:
        return GateCost(self.soft + other.soft, self.used + other.used, self.full + other.full)


def unit_cost(gate: torch.Tensor, cost_per_position: float, detach_soft: bool = False) -> GateCost:
    """Cost of a unit that costs ``cost_per_position`` MACs at each position of ``gate [N, G, H, W]``.

    Each of the G gate maps governs ``1/G`` of the unit (see :meth:`CostCollector.add_unit`).
    """
    collector = CostCollector()
    collector.add_unit(gate, cost_per_position, detach_soft)
    return collector.total


class CostCollector:
    """Accumulates the :class:`GateCost` of every gated unit during one forward pass.

    Units are added with :meth:`add_unit` (two reductions per unit; the per-unit costs are
    weighted and summed once, when :attr:`total` is read) or as ready :class:`GateCost` values
    with :meth:`add`.

    Args:
        keep_gate_maps: also record, per pyramid level, which positions each depth cell and
            each scale-fusion unit computes (see :meth:`add_depth_gate`, :meth:`gate_maps`,
            :meth:`add_fusion_gate` and :meth:`fusion_gate_maps`).
    """

    def __init__(self, keep_gate_maps: bool = False) -> None:
        self._added: GateCost | None = None
        self._gate_sums: list[torch.Tensor] = []  # [N] sum of a unit's gate values
        self._open_counts: list[torch.Tensor] = []  # [N] number of its non-zero gate values
        self._macs_per_value: list[float] = []  # MACs one gate value governs
        self._full_macs = 0.0  # per image
        self._depth_gates: list[list[torch.Tensor]] | None = [] if keep_gate_maps else None
        self._fusion_gates: list[list[torch.Tensor]] | None = [] if keep_gate_maps else None

    def add(self, cost: GateCost) -> None:
        """Add one unit's cost (``[N]`` MACs per field)."""
        self._added = cost if self._added is None else self._added + cost

    def add_unit(
        self, gate: torch.Tensor, cost_per_position: float, detach_soft: bool = False
    ) -> None:
        """Add a unit that costs ``cost_per_position`` MACs at each position of its gate
        ``[N, G, H, W]``; each of the G gate maps governs ``1/G`` of the unit. The same cost as
        :func:`unit_cost`; ``detach_soft`` keeps the budget loss from reaching the gate."""
        per_value = cost_per_position / gate.shape[1]
        values = gate.flatten(1)
        self._gate_sums.append((values.detach() if detach_soft else values).sum(1))
        self._open_counts.append(torch.count_nonzero(values.detach(), dim=1))
        self._macs_per_value.append(per_value)
        self._full_macs += values.shape[1] * per_value

    @property
    def total(self) -> GateCost | None:
        """The summed :class:`GateCost` of everything added (None when nothing was)."""
        if not self._gate_sums:
            return self._added
        sums = torch.stack(self._gate_sums)
        # float64 weights and sums: exact counts times MACs, and one rounding to the gate dtype.
        weights = torch.tensor(self._macs_per_value, dtype=torch.float64, device=sums.device)
        soft = (sums.double() * weights[:, None]).sum(0).to(sums.dtype)
        used = (torch.stack(self._open_counts).double() * weights[:, None]).sum(0).to(sums.dtype)
        total = GateCost(soft=soft, used=used, full=torch.full_like(used, self._full_macs))
        return total if self._added is None else total + self._added

    def extend(self, other: CostCollector) -> None:
        """Append everything ``other`` collected after what this one has, as if it had been
        added here in the same order (e.g. a second tower collected on another thread)."""
        if other._added is not None:
            self.add(other._added)
        self._gate_sums += other._gate_sums
        self._open_counts += other._open_counts
        self._macs_per_value += other._macs_per_value
        self._full_macs += other._full_macs
        for mine, theirs in (
            (self._depth_gates, other._depth_gates),
            (self._fusion_gates, other._fusion_gates),
        ):
            if mine is None or theirs is None:
                continue
            for level, maps in enumerate(theirs):
                while len(mine) <= level:
                    mine.append([])
                mine[level].extend(maps)

    def add_depth_gate(self, level: int, gate: torch.Tensor) -> None:
        """Record a depth cell's gate map ``gate [N, G, H_l, W_l]`` on pyramid level ``level``
        (index into the head's levels, finest first); a no-op unless ``keep_gate_maps``."""
        _record_gate(self._depth_gates, level, gate)

    def gate_maps(self) -> list[torch.Tensor] | None:
        """Per level (finest first) ``[N, H_l, W_l]``: the fraction of the level's depth cells
        computed at each position (in [0, 1]); None unless ``keep_gate_maps``."""
        return _fraction_maps(self._depth_gates)

    def add_fusion_gate(self, level: int, gate: torch.Tensor) -> None:
        """Record a scale-fusion unit's gate map ``gate [N, G, H_l, W_l]``, evaluated on the unit's
        input level ``level`` (where the unit is computed); a no-op unless ``keep_gate_maps``."""
        _record_gate(self._fusion_gates, level, gate)

    def fusion_gate_maps(self) -> list[torch.Tensor] | None:
        """Per level (finest first) ``[N, H_l, W_l]``: the fraction of the scale-fusion units
        gated on that level (both units of every fusion stage, as costed) that compute each
        position (in [0, 1]); None unless ``keep_gate_maps``."""
        return _fraction_maps(self._fusion_gates)


def _record_gate(store: list[list[torch.Tensor]] | None, level: int, gate: torch.Tensor) -> None:
    """Append ``gate [N, G, H, W]``'s computed positions (gate != 0 in any group) as ``[N, H, W]``
    0/1 to ``store[level]``; nothing when ``store`` is None."""
    if store is None:
        return
    while len(store) <= level:
        store.append([])
    store[level].append((gate.detach() != 0).any(dim=1).float())


def _fraction_maps(store: list[list[torch.Tensor]] | None) -> list[torch.Tensor] | None:
    """Per level the mean of its recorded 0/1 maps; None when nothing is kept."""
    if store is None:
        return None
    return [torch.stack(maps).mean(0) for maps in store]


class SpatialGate(nn.Module):
    """``gate = activation(gate_conv(x))``: ``[N, C, H, W]`` -> ``[N, num_groups, H', W']``.

    The conv has the kernel, padding and stride of the unit it gates (3x3, 1, 1 for every unit of
    the head), so the gate map lines up with the unit's output. Weights start ~N(0, 0.01) and the
    bias opens every gate to 0.99.
    """

    def __init__(
        self,
        in_channels: int,
        num_groups: int = 1,
        activation: str = "ReTanH",
        activation_kwargs: dict | None = None,
        kernel_size: int = 3,
        padding: int = 1,
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.activation_name = activation
        self.activate, inverse = gate_activation(activation, activation_kwargs)
        self.gate_conv = nn.Conv2d(
            in_channels, num_groups, kernel_size, stride=stride, padding=padding
        )
        nn.init.normal_(self.gate_conv.weight, std=0.01)
        nn.init.constant_(self.gate_conv.bias, inverse(INITIAL_GATE_VALUE))

    def forward(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """The gate map ``[N, G, H, W]`` of ``x [N, C, H, W]``.

        ``logits``: the gate convolution's output when it was already computed (see
        :func:`gate_logits`, which computes the gates reading the same input in one pass); the
        module is still called, so forward hooks see every gate map.
        """
        if logits is None:
            logits = gate_logits([self], x)[0]
        return self.activate(logits)

    def modulate(self, data: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``data [N, C, H, W] * gate [N, G, H, W]``, gate map g scaling channel group g."""
        n, c, h, w = data.shape
        g = gate.shape[1]
        if g == 1:
            return data * gate
        return (data.view(n, g, c // g, h, w) * gate.unsqueeze(2)).view(n, c, h, w)


def _fast_gate_conv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the compiled few-output 3x3 convolution applies (inference, CPU, float32)."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.shape[-2:] == (3, 3)
        and get_extension() is not None
    )


def gate_logits(gates: Sequence[SpatialGate], x: torch.Tensor) -> list[torch.Tensor]:
    """The gate convolutions of several gates that read the same input ``x``, in one pass.

    Returns one ``[N, G_i, H, W]`` logit map per gate. At inference on CPU this is the compiled
    few-output convolution (``torch.ops.cvpods.gate_conv2d``: the input is read once for all
    gates, instead of once per gate by a library convolution built for many outputs). In
    training on CPU it is one 1x1 convolution and a fold of the taps for all the gates
    (:func:`~cvpods.layers.few_output_conv.stacked_conv3x3`: the same function and gradients up
    to float rounding, 2-3x faster than a library convolution per gate).
    """
    convs = [gate.gate_conv for gate in gates]
    if uses_taps(x, convs):
        return stacked_conv3x3(convs, x)
    same_shape = all(
        (c.kernel_size, c.padding, c.stride) == (convs[0].kernel_size, (1, 1), (1, 1))
        for c in convs
    )
    if not (same_shape and _fast_gate_conv(x, convs[0].weight)):
        return [conv(x) for conv in convs]
    weight = torch.cat([c.weight for c in convs]) if len(convs) > 1 else convs[0].weight
    bias = torch.cat([c.bias for c in convs]) if len(convs) > 1 else convs[0].bias
    logits = torch.ops.cvpods.gate_conv2d(
        x.contiguous(memory_format=torch.channels_last), weight, bias
    )
    return list(logits.split([c.out_channels for c in convs], dim=1))
