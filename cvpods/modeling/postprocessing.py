"""Between the network and the user: normalising and padding the input images, mapping
predictions from the network's input resolution to the requested output resolution, and turning
a gated head's batch cost and gate maps into per-image output values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..layers import GateCost
from ..structures import ImageList, Instances


def register_pixel_normalization(
    module: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> None:
    """Give ``module`` the non-persistent buffers ``pixel_mean`` / ``pixel_std`` ``[C, 1, 1]``
    (MODEL.PIXEL_MEAN / PIXEL_STD) that :func:`normalize_and_pad` uses."""
    if len(pixel_mean) != len(pixel_std):
        raise ValueError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must have the same length")
    module.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
    module.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)


def normalize_and_pad(
    batched_inputs: list[dict],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    size_divisibility: int,
    device: torch.device,
) -> ImageList:
    """``(image - mean) / std`` for each ``batched_inputs[i]["image"]`` ``[3, H, W]``, padded to a
    batch whose sides are multiples of ``size_divisibility``."""
    images = [
        (x["image"].to(device, torch.float32) - pixel_mean) / pixel_std for x in batched_inputs
    ]
    return ImageList.from_tensors(images, size_divisibility)


def postprocess_batch(
    results: list[Instances], batched_inputs: list[dict], image_sizes: list[tuple[int, int]]
) -> list[dict]:
    """``[{"instances": ...}]`` rescaled to each input's requested ``height`` / ``width`` (default:
    the size the network saw)."""
    processed = []
    for result, inputs, image_size in zip(results, batched_inputs, image_sizes):
        height = inputs.get("height", image_size[0])
        width = inputs.get("width", image_size[1])
        processed.append({"instances": detector_postprocess(result, height, width)})
    return processed


def detector_postprocess(results: Instances, output_height: int, output_width: int) -> Instances:
    """Rescale ``pred_boxes`` from ``results.image_size`` to ``(output_height, output_width)``,
    clip them to it and drop the boxes that became empty."""
    scale_x = output_width / results.image_size[1]
    scale_y = output_height / results.image_size[0]
    results = Instances((output_height, output_width), **results.get_fields())
    boxes = results.pred_boxes
    boxes.scale(scale_x, scale_y)
    boxes.clip(results.image_size)
    return results[boxes.nonempty()]


def per_image_head_outputs(
    cost: GateCost | None,
    gate_maps: list[torch.Tensor] | None,
    image_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    fusion_gate_maps: list[torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Split a gated head's batch outputs into one dict per image, for the model's results.

    Args:
        cost: the head's cost, each field ``[N]`` (MACs); None for a static head.
        gate_maps: per level ``[N, h_l, w_l]`` (fraction of depth cells computed), or None.
        image_sizes: the ``(H, W)`` of each network input before padding.
        strides: the stride of each level (pixels), finest first.
        fusion_gate_maps: per level ``[N, h_l, w_l]`` (fraction of scale-fusion units
            computed), or None.

    Returns:
        ``N`` dicts holding ``"head_cost"`` (a :class:`~cvpods.layers.GateCost` of 0-d tensors,
        detached) when ``cost`` is given and ``"gate_maps"`` (per level ``[ceil(H / s),
        ceil(W / s)]``: the cells that cover the unpadded input) when ``gate_maps`` is given;
        likewise ``"fusion_gate_maps"`` when ``fusion_gate_maps`` is given.
    """
    per_image: list[dict[str, Any]] = [{} for _ in image_sizes]
    for i, (height, width) in enumerate(image_sizes):
        if cost is not None:
            per_image[i]["head_cost"] = GateCost(
                cost.soft[i].detach(), cost.used[i].detach(), cost.full[i].detach()
            )
        for key, maps in (("gate_maps", gate_maps), ("fusion_gate_maps", fusion_gate_maps)):
            if maps is not None:
                per_image[i][key] = [
                    level[i, : math.ceil(height / s), : math.ceil(width / s)]
                    for level, s in zip(maps, strides)
                ]
    return per_image


def batch_head_cost(cost: GateCost | None) -> dict[str, GateCost]:
    """``{"head_cost": GateCost}`` (each field ``[N]`` MACs, detached) for a training loss dict;
    ``{}`` for a static head. The trainer sums only tensor entries of that dict."""
    if cost is None:
        return {}
    return {"head_cost": GateCost(cost.soft.detach(), cost.used.detach(), cost.full.detach())}
