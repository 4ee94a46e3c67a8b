"""IoU losses between boxes given as (l, t, r, b) distances from the same location."""

from __future__ import annotations

import torch
from torchvision.ops import generalized_box_iou_loss

IOU_LOSS_TYPES = ("iou", "linear_iou", "giou")


def _ltrb_to_boxes(ltrb: torch.Tensor) -> torch.Tensor:
    """Distances ``[N, 4]`` -> XYXY boxes around the origin (the shared location)."""
    return torch.cat((-ltrb[:, :2], ltrb[:, 2:]), dim=1)


def iou_loss(
    pred_ltrb: torch.Tensor,
    target_ltrb: torch.Tensor,
    weight: torch.Tensor | None = None,
    loss_type: str = "iou",
    reduction: str = "sum",
) -> torch.Tensor:
    """IoU loss of ``pred_ltrb [N, 4]`` against ``target_ltrb [N, 4]``, optionally weighted ``[N]``.

    ``iou``: ``-log(IoU)``; ``linear_iou``: ``1 - IoU``; ``giou``: ``1 - GIoU`` (torchvision).
    """
    if loss_type not in IOU_LOSS_TYPES:
        raise ValueError(
            f"unknown MODEL.FCOS.IOU_LOSS_TYPE {loss_type!r}; expected one of {IOU_LOSS_TYPES}"
        )
    pred, target = _ltrb_to_boxes(pred_ltrb), _ltrb_to_boxes(target_ltrb)
    if loss_type == "giou":
        loss = generalized_box_iou_loss(pred, target, reduction="none")
    else:
        eps = torch.finfo(pred.dtype).eps
        pred_area = (pred_ltrb[:, 0] + pred_ltrb[:, 2]) * (pred_ltrb[:, 1] + pred_ltrb[:, 3])
        target_area = (target_ltrb[:, 0] + target_ltrb[:, 2]) * (
            target_ltrb[:, 1] + target_ltrb[:, 3]
        )
        inter_w = (torch.min(pred[:, 2], target[:, 2]) - torch.max(pred[:, 0], target[:, 0])).clamp(
            min=0
        )
        inter_h = (torch.min(pred[:, 3], target[:, 3]) - torch.max(pred[:, 1], target[:, 1])).clamp(
            min=0
        )
        inter = inter_w * inter_h
        ious = inter / (pred_area + target_area - inter).clamp(min=eps)
        loss = -ious.clamp(min=eps).log() if loss_type == "iou" else 1 - ious
    if weight is not None:
        loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss
