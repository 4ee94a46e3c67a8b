"""Running record of the dynamic head's per-image cost during evaluation."""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

#: The release reports "GFLOPs" as multiply-accumulates / 2**30.
MACS_PER_GFLOP = float(2**30)


class HeadComplexityMeter:
    """Per-image head cost (GFLOPs = MACs / 2**30) recorded since the last :meth:`reset`."""

    def __init__(self, log_period: int = 100) -> None:
        self.log_period = log_period
        self._values: list[float] = []

    def reset(self) -> None:
        self._values = []

    def update(self, used_macs: torch.Tensor) -> None:
        """Record a batch: ``used_macs [N]``, the MACs the head computed for each image."""
        before = len(self._values)
        self._values.extend((used_macs.detach().double() / MACS_PER_GFLOP).tolist())
        logger.debug("Head complexity: %s", self.summary_line())
        if self.log_period and before // self.log_period != len(self._values) // self.log_period:
            logger.info("Head complexity: %s", self.summary_line())

    def values(self) -> list[float]:
        return list(self._values)

    def summary(self) -> dict[str, float]:
        """``{"current", "avg", "min", "max"}`` in GFLOPs and ``num_images`` (empty: {})."""
        if not self._values:
            return {}
        return {
            "current": self._values[-1],
            "avg": sum(self._values) / len(self._values),
            "min": min(self._values),
            "max": max(self._values),
            "num_images": len(self._values),
        }

    def summary_line(self) -> str:
        s = self.summary()
        if not s:
            return "no images"
        return (
            f"CUR: {s['current']:.3f} GFLOPs, AVG: {s['avg']:.3f} GFLOPs, "
            f"MAX: {s['max']:.3f} GFLOPs, MIN: {s['min']:.3f} GFLOPs"
        )


def level_sizes(
    image_size: tuple[int, int], size_divisibility: int, strides: list[int]
) -> list[tuple[int, int]]:
    """Feature-map sizes of each level for an ``(H, W)`` image padded to ``size_divisibility``.

    A level of stride ``s`` has ``ceil(H_pad / s) x ceil(W_pad / s)`` cells (P6/P7 come from
    stride-2 convs with padding 1, which round up the same way).
    """
    h, w = image_size
    if size_divisibility > 1:
        h = math.ceil(h / size_divisibility) * size_divisibility
        w = math.ceil(w / size_divisibility) * size_divisibility
    return [(math.ceil(h / s), math.ceil(w / s)) for s in strides]


def head_full_cost(head, image_size: tuple[int, int], size_divisibility: int = 32) -> float:
    """MACs of the head's towers computed at every position, for one ``(H, W)`` input image.

    Unit costs are the release's (conv MACs plus one per channel for each GroupNorm; see
    :func:`~cvpods.layers.scale_fusion.depthwise_unit_cost`); predictors and gates are not counted.
    """
    positions = sum(h * w for h, w in level_sizes(image_size, size_divisibility, head.fpn_strides))
    return head.cost_per_position() * positions
