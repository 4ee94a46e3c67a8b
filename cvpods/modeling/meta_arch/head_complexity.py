"""Units and reference costs of a head: the GFLOP unit of the release, the feature-map sizes of an
input image, and the full (static) cost of a head's towers for an image size."""

from __future__ import annotations

import math

#: The release reports "GFLOPs" as multiply-accumulates / 2**30.
MACS_PER_GFLOP = float(2**30)


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
