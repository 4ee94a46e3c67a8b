"""Fast R-CNN box predictor: class scores and per-class box deltas for each ROI, its losses and
its inference (per-class score threshold and NMS)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from ...structures import Boxes, Instances
from ..box_regression import Box2BoxTransform
from ..losses import smooth_l1_loss


class FastRCNNOutputLayers(nn.Module):
    """``cls_score``: Linear to K + 1 logits (the last is background); ``bbox_pred``: Linear to
    4 x K deltas (4 with class-agnostic regression). Weights ~N(0, 0.01) and N(0, 0.001), biases 0.
    """

    def __init__(
        self, input_size: int, num_classes: int, cls_agnostic_bbox_reg: bool, box_dim: int = 4
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        num_bbox_reg_classes = 1 if cls_agnostic_bbox_reg else num_classes
        self.bbox_pred = nn.Linear(input_size, num_bbox_reg_classes * box_dim)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [R, D]`` (flattened if needed) -> ``(logits [R, K + 1], deltas [R, 4K or 4])``."""
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


def fast_rcnn_losses(
    pred_class_logits: torch.Tensor,
    pred_proposal_deltas: torch.Tensor,
    proposals: Sequence[Instances],
    box2box_transform: Box2BoxTransform,
    smooth_l1_beta: float,
) -> dict[str, torch.Tensor]:
    """``loss_cls``: softmax cross-entropy averaged over the R sampled ROIs; ``loss_box_reg``:
    smooth L1 of the foreground ROIs' deltas for their ground-truth class, summed and divided by R.

    ``proposals``: per image, Instances with ``proposal_boxes``, ``gt_classes`` (K = background)
    and ``gt_boxes``; their concatenation lines up with the R rows of the predictions.
    """
    gt_classes = torch.cat([p.gt_classes for p in proposals])
    if gt_classes.numel() == 0:  # no ROI at all: zero losses that still reach every parameter
        zero = pred_class_logits.sum() * 0.0 + pred_proposal_deltas.sum() * 0.0
        return {"loss_cls": zero, "loss_box_reg": zero.clone()}
    loss_cls = F.cross_entropy(pred_class_logits, gt_classes, reduction="mean")

    proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
    gt_boxes = torch.cat([p.gt_boxes.tensor for p in proposals])
    box_dim = proposal_boxes.shape[1]
    num_classes = pred_class_logits.shape[1] - 1
    foreground = torch.nonzero((gt_classes >= 0) & (gt_classes < num_classes), as_tuple=True)[0]
    if pred_proposal_deltas.shape[1] == box_dim:  # class-agnostic regression
        columns = torch.arange(box_dim, device=gt_classes.device).expand(len(foreground), -1)
    else:
        columns = box_dim * gt_classes[foreground, None] + torch.arange(
            box_dim, device=gt_classes.device
        )
    gt_deltas = box2box_transform.get_deltas(proposal_boxes[foreground], gt_boxes[foreground])
    loss_box_reg = (
        smooth_l1_loss(
            pred_proposal_deltas[foreground[:, None], columns],
            gt_deltas,
            smooth_l1_beta,
            reduction="sum",
        )
        / gt_classes.numel()
    )
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}


@torch.no_grad()
def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_size: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Instances:
    """``boxes [R, 4K or 4]`` (decoded, input coordinates) and ``scores [R, K + 1]``
    (probabilities) -> Instances with ``pred_boxes``, ``scores``, ``pred_classes``: every
    (ROI, class) above ``score_thresh``, boxes clipped, NMS per class, the ``topk_per_image`` best
    (all when < 0)."""
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not finite.all():
        boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_size)
    boxes = clipped.tensor.view(-1, num_bbox_reg_classes, 4)
    keep_mask = scores > score_thresh
    keep_inds = keep_mask.nonzero()
    if num_bbox_reg_classes == 1:
        boxes = boxes[keep_inds[:, 0], 0]
    else:
        boxes = boxes[keep_mask]
    scores = scores[keep_mask]
    classes = keep_inds[:, 1]
    keep = batched_nms(boxes, scores, classes, nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    return Instances(
        tuple(image_size),
        pred_boxes=Boxes(boxes[keep]),
        scores=scores[keep],
        pred_classes=classes[keep],
    )


@torch.no_grad()
def fast_rcnn_inference(
    pred_class_logits: torch.Tensor,
    pred_proposal_deltas: torch.Tensor,
    proposals: Sequence[Instances],
    box2box_transform: Box2BoxTransform,
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> list[Instances]:
    """Decode the predictions of all ROIs (``[R, K + 1]``, ``[R, 4K]``; the proposals of each
    image in order) and run :func:`fast_rcnn_inference_single_image` per image."""
    num_per_image = [len(p) for p in proposals]
    proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
    boxes = box2box_transform.apply_deltas(pred_proposal_deltas, proposal_boxes)
    scores = F.softmax(pred_class_logits, dim=-1)
    return [
        fast_rcnn_inference_single_image(
            b, s, p.image_size, score_thresh, nms_thresh, topk_per_image
        )
        for b, s, p in zip(boxes.split(num_per_image), scores.split(num_per_image), proposals)
    ]
