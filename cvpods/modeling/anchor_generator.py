"""Anchor boxes: a few reference boxes ("cell anchors") repeated at every location of every level."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..structures import Boxes


def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on (0, 0): ``[len(sizes) * len(aspect_ratios), 4]`` XYXY, sizes outer.

    An anchor of size ``s`` and aspect ratio ``a = h / w`` has area ``s**2``:
    ``w = sqrt(s**2 / a)``, ``h = a * w``.
    """
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def _broadcast_per_level(values: Sequence, num_levels: int, name: str) -> list:
    """``[[...]]`` (one list for all levels) or one list per level."""
    values = [list(v) for v in values]
    if len(values) == 1:
        return values * num_levels
    if len(values) != num_levels:
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.{name} has {len(values)} entries for {num_levels} levels "
            "(give one list, or one per level)"
        )
    return values


def grid_anchors(
    cell_anchors: torch.Tensor, grid_size: tuple[int, int], stride: int, offset: float
) -> torch.Tensor:
    """``cell_anchors [A, 4]`` shifted to every cell of an ``(H, W)`` grid of ``stride``:
    ``[H * W * A, 4]``, row-major over cells, the A anchors of a cell together. Cell ``(i, j)``
    is centred at ``((j + offset) * stride, (i + offset) * stride)``."""
    h, w = grid_size
    device = cell_anchors.device
    shift_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    shift_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    shift_x = shift_x + offset * stride
    shift_y = shift_y + offset * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack((xx, yy, xx, yy), dim=1)
    return (shifts.view(-1, 1, 4) + cell_anchors.view(1, -1, 4)).reshape(-1, 4)


class _BufferList(nn.Module):
    """Tensors stored as buffers named ``0``, ``1``, ... (state-dict keys ``cell_anchors.<i>``)."""

    def __init__(self, buffers: Sequence[torch.Tensor]) -> None:
        super().__init__()
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(i), buffer)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


class DefaultAnchorGenerator(nn.Module):
    """The anchors of every FPN level: level ``l`` has ``len(SIZES[l]) * len(ASPECT_RATIOS[l])``
    anchors per cell (MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS / OFFSET; one list applies to
    every level). The cell anchors are buffers (``cell_anchors.<l>``), as in cvpods checkpoints.

    Args:
        sizes: anchor sizes (sqrt of the area, input pixels): one list per level, or one list
            for every level.
        aspect_ratios: height / width ratios, likewise.
        strides: the levels' strides in input pixels, finest first.
        offset: anchor centres at ``(cell + offset) * stride``, ``offset`` in [0, 1).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        sizes = _broadcast_per_level(sizes, len(self.strides), "SIZES")
        aspect_ratios = _broadcast_per_level(aspect_ratios, len(self.strides), "ASPECT_RATIOS")
        self.cell_anchors = _BufferList(
            [generate_cell_anchors(s, a) for s, a in zip(sizes, aspect_ratios)]
        )

    @classmethod
    def from_config(cls, cfg, strides: Sequence[int]) -> dict:
        """The constructor's arguments from MODEL.ANCHOR_GENERATOR, for levels of ``strides``."""
        a = cfg.MODEL.ANCHOR_GENERATOR
        return dict(sizes=a.SIZES, aspect_ratios=a.ASPECT_RATIOS, strides=strides, offset=a.OFFSET)

    @property
    def num_cell_anchors(self) -> list[int]:
        """Anchors per cell of each level."""
        return [len(c) for c in self.cell_anchors]

    @property
    def box_dim(self) -> int:
        """Numbers per anchor box (XYXY)."""
        return 4

    def forward(self, features: list[torch.Tensor]) -> list[Boxes]:
        """``features``: levels ``[N, C, H_l, W_l]`` -> per level ``Boxes [H_l * W_l * A_l]``
        (the same for every image of the batch)."""
        return [
            Boxes(grid_anchors(cell, tuple(f.shape[-2:]), stride, self.offset))
            for f, cell, stride in zip(features, self.cell_anchors, self.strides)
        ]
