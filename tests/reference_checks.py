"""Comparisons against the official implementation's outputs, with the fixture README's tolerances."""

from __future__ import annotations

import torch

from cvpods.engine.train_loop import loss_tensors
from cvpods.structures import Boxes, Instances

# float32 on a CPU: outputs and losses within ~1e-4 relative.
RTOL = 1e-4
ATOL = 1e-5


def assert_tensors_close(
    actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = ATOL
) -> None:
    torch.testing.assert_close(
        actual.detach(), expected, rtol=RTOL, atol=atol, msg=lambda m: f"{what}: {m}"
    )


def assert_losses_match(losses: dict, expected: dict) -> None:
    losses = loss_tensors(losses)  # a gated head's "head_cost" is an output, not a loss
    assert set(losses) == set(expected), f"loss names {sorted(losses)} != {sorted(expected)}"
    for name, value in expected.items():
        assert_tensors_close(losses[name], value, name)


def assert_detections_match(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, expected: dict
) -> None:
    """Same number and classes; boxes within 1e-2 px and scores within 1e-4, near-ties may swap."""
    assert len(scores) == len(expected["scores"]), (
        f"{len(scores)} detections, expected {len(expected['scores'])}"
    )
    order = scores.argsort(descending=True)
    ref_order = expected["scores"].argsort(descending=True)
    torch.testing.assert_close(scores[order], expected["scores"][ref_order], rtol=0, atol=1e-4)
    unmatched = list(range(len(scores)))
    for j in ref_order.tolist():
        ref_box, ref_score, ref_class = (
            expected["boxes"][j],
            expected["scores"][j],
            expected["classes"][j],
        )
        for k in unmatched:
            if (
                classes[k] == ref_class
                and abs(float(scores[k] - ref_score)) <= 1e-4
                and float((boxes[k] - ref_box).abs().max()) <= 1e-2
            ):
                unmatched.remove(k)
                break
        else:
            raise AssertionError(
                f"no detection matches reference {ref_box.tolist()} {float(ref_score)} {int(ref_class)}"
            )


def gt_instances(image_hw, boxes: torch.Tensor, classes: torch.Tensor) -> Instances:
    return Instances(tuple(image_hw), gt_boxes=Boxes(boxes), gt_classes=classes)
