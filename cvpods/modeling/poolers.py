"""Multi-level ROI pooling: each box is pooled from the FPN level that suits its size."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from ..structures import Boxes

POOLER_TYPES = ("ROIAlign", "ROIAlignV2")


def assign_boxes_to_levels(
    box_lists: Sequence[Boxes],
    min_level: int,
    max_level: int,
    canonical_box_size: int,
    canonical_level: int,
) -> torch.Tensor:
    """Eq. 1 of the FPN paper: ``floor(canonical_level + log2(sqrt(area) / canonical_box_size))``
    clamped to ``[min_level, max_level]``; returns ``[R]`` int64 level indices minus ``min_level``
    for the R boxes of all images."""
    box_sizes = torch.sqrt(torch.cat([boxes.area() for boxes in box_lists]))
    levels = torch.floor(
        canonical_level + torch.log2(box_sizes / canonical_box_size + sys.float_info.epsilon)
    )
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def convert_boxes_to_pooler_format(box_lists: Sequence[Boxes]) -> torch.Tensor:
    """Per-image Boxes -> ``[R, 5]`` rows ``(image index, x0, y0, x1, y1)``."""
    rows = []
    for i, boxes in enumerate(box_lists):
        t = boxes.tensor
        rows.append(torch.cat((torch.full_like(t[:, :1], i), t), dim=1))
    return torch.cat(rows, dim=0)


class ROIPooler(nn.Module):
    """ROIAlign over a pyramid: ``output_size`` bins from the level chosen for each box.

    ``scales``: 1 / stride of each level, finest first (powers of 2, consecutive).
    ``pooler_type``: "ROIAlignV2" (``aligned=True``: pixel centres at +0.5) or "ROIAlign".
    ``sampling_ratio``: samples per bin side (0: adaptive, ``ceil(roi size / bins)``).
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if pooler_type not in POOLER_TYPES:
            raise ValueError(
                f"unknown MODEL.ROI_BOX_HEAD.POOLER_TYPE {pooler_type!r}; expected one of {POOLER_TYPES}"
            )
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)
        self.scales = [float(s) for s in scales]
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = pooler_type == "ROIAlignV2"
        min_level = -math.log2(self.scales[0])
        max_level = -math.log2(self.scales[-1])
        if not (min_level.is_integer() and max_level.is_integer()):
            raise ValueError(f"pooler scales must be powers of 1/2, got {self.scales}")
        self.min_level, self.max_level = int(min_level), int(max_level)
        if len(self.scales) != self.max_level - self.min_level + 1:
            raise ValueError(f"pooler scales must be consecutive levels, got {self.scales}")
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def _pool(self, x: torch.Tensor, rois: torch.Tensor, scale: float) -> torch.Tensor:
        return roi_align(
            x, rois, self.output_size, scale, self.sampling_ratio, aligned=self.aligned
        )

    def forward(self, features: list[torch.Tensor], box_lists: Sequence[Boxes]) -> torch.Tensor:
        """``features``: levels ``[N, C, H_l, W_l]``; ``box_lists``: N Boxes in input pixels ->
        ``[R, C, out_h, out_w]``, the boxes of all images in order."""
        if len(features) != len(self.scales):
            raise ValueError(f"ROIPooler got {len(features)} levels for {len(self.scales)} scales")
        rois = convert_boxes_to_pooler_format(box_lists).to(features[0].dtype)
        if len(self.scales) == 1:
            return self._pool(features[0], rois, self.scales[0])
        levels = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        channels = features[0].shape[1]
        output = features[0].new_zeros((rois.shape[0], channels, *self.output_size))
        for level, (x, scale) in enumerate(zip(features, self.scales)):
            indices = torch.nonzero(levels == level, as_tuple=True)[0]
            if indices.numel():
                output[indices] = self._pool(x, rois[indices], scale)
        return output
