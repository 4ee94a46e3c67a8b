"""Detection losses."""

from .budget_loss import budget_loss, budget_loss_weight
from .iou_loss import IOU_LOSS_TYPES, iou_loss
from .smooth_l1_loss import smooth_l1_loss

__all__ = ["IOU_LOSS_TYPES", "budget_loss", "budget_loss_weight", "iou_loss", "smooth_l1_loss"]
