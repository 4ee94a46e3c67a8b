"""Box encodings: locations (shifts) and boxes <-> (l, t, r, b) distances."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Shift2BoxTransform:
    """Encode a box relative to a location ``(x, y)`` as the weighted distances ``(l, t, r, b)``.

    ``l = x - x0``, ``t = y - y0``, ``r = x1 - x``, ``b = y1 - y``, each times its weight.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> None:
        if len(weights) != 4:
            raise ValueError(f"MODEL.FCOS.BBOX_REG_WEIGHTS needs 4 values, got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)

    def get_deltas(self, shifts: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``shifts [..., 2]`` and ``boxes [..., 4]`` (broadcast) -> distances ``[..., 4]`` in pixels."""
        deltas = torch.cat((shifts - boxes[..., :2], boxes[..., 2:] - shifts), dim=-1)
        return deltas * deltas.new_tensor(self.weights)

    def apply_deltas(self, deltas: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`get_deltas`: ``deltas [N, 4]`` at ``shifts [N, 2]`` -> XYXY boxes ``[N, 4]``."""
        if deltas.numel() == 0:
            return torch.empty_like(deltas)
        deltas = deltas.view(deltas.size(0), -1, 4) / deltas.new_tensor(self.weights)
        boxes = torch.cat(
            (shifts.unsqueeze(-2) - deltas[..., :2], shifts.unsqueeze(-2) + deltas[..., 2:]), dim=-1
        )
        return boxes.view(deltas.size(0), -1)
