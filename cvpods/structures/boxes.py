"""Axis-aligned boxes in absolute XYXY pixel coordinates."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torchvision.ops import box_area, box_iou


class Boxes:
    """A list of N boxes stored as a float tensor ``[N, 4]`` of ``(x0, y0, x1, y1)`` in pixels."""

    def __init__(self, tensor: torch.Tensor | Sequence) -> None:
        device = tensor.device if isinstance(tensor, torch.Tensor) else torch.device("cpu")
        tensor = torch.as_tensor(tensor, dtype=torch.float32, device=device)
        if tensor.numel() == 0:
            tensor = tensor.reshape(0, 4)
        if tensor.dim() != 2 or tensor.size(-1) != 4:
            raise ValueError(f"Boxes expects a [N, 4] tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    def clone(self) -> Boxes:
        return Boxes(self.tensor.clone())

    def to(self, *args: Any, **kwargs: Any) -> Boxes:
        return Boxes(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        """``[N]`` box areas in square pixels."""
        return box_area(self.tensor)

    def clip(self, box_size: tuple[int, int]) -> None:
        """Clip in place to an image of ``(height, width)``."""
        h, w = box_size
        self.tensor[:, 0::2] = self.tensor[:, 0::2].clamp(min=0, max=w)
        self.tensor[:, 1::2] = self.tensor[:, 1::2].clamp(min=0, max=h)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """``[N]`` bool: boxes whose width and height both exceed ``threshold``."""
        widths = self.tensor[:, 2] - self.tensor[:, 0]
        heights = self.tensor[:, 3] - self.tensor[:, 1]
        return (widths > threshold) & (heights > threshold)

    def get_centers(self) -> torch.Tensor:
        """``[N, 2]`` box centres ``(x, y)``."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale in place: x coordinates by ``scale_x``, y coordinates by ``scale_y``."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    def inside_box(self, box_size: tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """``[N]`` bool: boxes lying inside an image of ``(height, width)`` (+ a margin)."""
        h, w = box_size
        t = boundary_threshold
        return (
            (self.tensor[:, 0] >= -t)
            & (self.tensor[:, 1] >= -t)
            & (self.tensor[:, 2] < w + t)
            & (self.tensor[:, 3] < h + t)
        )

    def __getitem__(self, item: int | slice | torch.Tensor) -> Boxes:
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        selected = self.tensor[item]
        if selected.dim() != 2:
            raise IndexError(f"indexing Boxes with {item} did not give a [N, 4] tensor")
        return Boxes(selected)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @classmethod
    def cat(cls, boxes_list: Sequence[Boxes]) -> Boxes:
        if not boxes_list:
            return cls(torch.empty(0, 4))
        if not all(isinstance(b, Boxes) for b in boxes_list):
            raise TypeError("Boxes.cat takes a list of Boxes")
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """``[N, M]`` IoU between every box of ``boxes1`` and every box of ``boxes2``."""
    return box_iou(boxes1.tensor, boxes2.tensor)
