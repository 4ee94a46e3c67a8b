"""Detection losses."""

from .iou_loss import IOU_LOSS_TYPES, iou_loss

__all__ = ["IOU_LOSS_TYPES", "iou_loss"]
