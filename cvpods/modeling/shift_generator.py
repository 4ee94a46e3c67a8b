"""The locations ("shifts") at which FCOS predicts, one per feature-map cell."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ShiftGenerator(nn.Module):
    """Image-plane locations of every cell of every level.

    For a level of stride ``s`` and size ``h x w`` the locations are
    ``((j + offset) * s, (i + offset) * s)`` for row ``i``, column ``j``, in row-major order, in
    input-image pixels.
    """

    def __init__(self, strides: Sequence[int], offset: float = 0.0, num_shifts: int = 1) -> None:
        super().__init__()
        if num_shifts != 1:
            raise ValueError(
                f"MODEL.SHIFT_GENERATOR.NUM_SHIFTS must be 1 for FCOS, got {num_shifts}"
            )
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.SHIFT_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)

    def grid(self, size: Sequence[int], stride: int, device: torch.device) -> torch.Tensor:
        """``[h * w, 2]`` locations ``(x, y)`` of an ``h x w`` level."""
        h, w = int(size[0]), int(size[1])
        xs = (torch.arange(w, dtype=torch.float32, device=device) + self.offset) * stride
        ys = (torch.arange(h, dtype=torch.float32, device=device) + self.offset) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1)

    def forward(self, features: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per image, per level ``[h_l * w_l, 2]`` locations (the same for every image)."""
        grids = [
            self.grid(f.shape[-2:], stride, f.device) for f, stride in zip(features, self.strides)
        ]
        return [grids for _ in range(features[0].shape[0])]
