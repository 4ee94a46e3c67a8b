"""Map predictions from the network's input resolution to the requested output resolution."""

from __future__ import annotations

from ..structures import Instances


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
