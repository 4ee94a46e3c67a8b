"""Detection losses."""

from .iou_loss import IOU_LOSS_TYPES, iou_loss
from .smooth_l1_loss import smooth_l1_loss

__all__ = ["IOU_LOSS_TYPES", "iou_loss", "smooth_l1_loss"]
