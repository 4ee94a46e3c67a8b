"""What the RPN computes from its head's outputs: training targets and losses, and proposals.

Shapes: N images, R anchors of all levels (level by level, each row-major over cells with the A
anchors of a cell together), ``R_l`` anchors of level l.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import batched_nms

from ...structures import Boxes, Instances, pairwise_iou
from ..box_regression import Box2BoxTransform
from ..losses import smooth_l1_loss
from ..matcher import Matcher
from ..sampling import subsample_labels


def flatten_objectness(per_level: list[torch.Tensor]) -> list[torch.Tensor]:
    """Levels ``[N, A, H, W]`` -> ``[N, H * W * A]`` (the anchor order)."""
    return [x.permute(0, 2, 3, 1).flatten(1) for x in per_level]


def flatten_anchor_deltas(per_level: list[torch.Tensor]) -> list[torch.Tensor]:
    """Levels ``[N, A * 4, H, W]`` -> ``[N, H * W * A, 4]`` (the anchor order)."""
    out = []
    for x in per_level:
        n, _, h, w = x.shape
        out.append(x.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return out


@torch.no_grad()
def label_anchors(
    anchors: Boxes,
    gt_instances: Sequence[Instances],
    image_sizes: Sequence[tuple[int, int]],
    matcher: Matcher,
    box2box_transform: Box2BoxTransform,
    boundary_threshold: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objectness targets and regression targets of all R anchors for each image.

    Returns ``gt_labels [N, R]`` (int: 1 object, 0 background, -1 ignored) and
    ``gt_deltas [N, R, 4]`` (to the matched box; zeros for an image without boxes).
    ``boundary_threshold >= 0`` ignores anchors sticking out of the image by more than that.
    """
    labels, deltas = [], []
    for gt, image_size in zip(gt_instances, image_sizes):
        gt_boxes = gt.gt_boxes
        matched, label = matcher(pairwise_iou(gt_boxes, anchors))
        label = label.to(torch.int64)
        if boundary_threshold >= 0:
            label[~anchors.inside_box(image_size, boundary_threshold)] = -1
        if len(gt_boxes) == 0:
            delta = torch.zeros_like(anchors.tensor)
        else:
            delta = box2box_transform.get_deltas(anchors.tensor, gt_boxes.tensor[matched])
        labels.append(label)
        deltas.append(delta)
    return torch.stack(labels), torch.stack(deltas)


@torch.no_grad()
def sample_anchors(
    gt_labels: torch.Tensor, batch_size_per_image: int, positive_fraction: float
) -> torch.Tensor:
    """``gt_labels [N, R]`` with only a random sample of each image's anchors kept (the rest -1)."""
    sampled = []
    for label in gt_labels:
        positive, negative = subsample_labels(label, batch_size_per_image, positive_fraction, 0)
        out = torch.full_like(label, -1)
        out.scatter_(0, positive, 1)
        out.scatter_(0, negative, 0)
        sampled.append(out)
    return torch.stack(sampled)


def rpn_losses(
    gt_labels: torch.Tensor,
    gt_deltas: torch.Tensor,
    pred_objectness: torch.Tensor,
    pred_deltas: torch.Tensor,
    smooth_l1_beta: float,
    normalizer: float,
) -> dict[str, torch.Tensor]:
    """``loss_rpn_cls``: binary cross-entropy over the sampled anchors; ``loss_rpn_loc``: smooth L1
    of the positive anchors' deltas; both summed and divided by ``normalizer`` (the sampling
    budget of the batch). Inputs ``[N, R]`` / ``[N, R, 4]``; an image without boxes contributes
    background terms only (zero localisation loss)."""
    gt_labels = gt_labels.flatten()
    positive = gt_labels == 1
    valid = gt_labels >= 0
    loss_loc = smooth_l1_loss(
        pred_deltas.reshape(-1, 4)[positive],
        gt_deltas.reshape(-1, 4)[positive],
        smooth_l1_beta,
        reduction="sum",
    )
    loss_cls = torch.nn.functional.binary_cross_entropy_with_logits(
        pred_objectness.flatten()[valid],
        gt_labels[valid].to(pred_objectness.dtype),
        reduction="sum",
    )
    return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}


@torch.no_grad()
def decode_proposals(
    anchors: Sequence[Boxes],
    pred_deltas: Sequence[torch.Tensor],
    box2box_transform: Box2BoxTransform,
) -> list[torch.Tensor]:
    """Per level: anchors ``Boxes [R_l]`` and deltas ``[N, R_l, 4]`` -> boxes ``[N, R_l, 4]``."""
    out = []
    for anchors_l, deltas_l in zip(anchors, pred_deltas):
        n = deltas_l.shape[0]
        boxes = anchors_l.tensor.unsqueeze(0).expand(n, -1, -1).reshape(-1, 4)
        out.append(box2box_transform.apply_deltas(deltas_l.reshape(-1, 4), boxes).view(n, -1, 4))
    return out


@torch.no_grad()
def find_top_rpn_proposals(
    proposals: Sequence[torch.Tensor],
    pred_objectness: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_side_len: float,
) -> list[Instances]:
    """The RPN's proposals for each image.

    Per level, the ``pre_nms_topk`` boxes of highest objectness (``proposals [N, R_l, 4]``,
    ``pred_objectness [N, R_l]``); per image, these are clipped to the image, boxes with a side
    not above ``min_box_side_len`` dropped, NMS at ``nms_thresh`` applied within each level, and
    the ``post_nms_topk`` best kept. Returns Instances with ``proposal_boxes`` and
    ``objectness_logits``, sorted by objectness, in input-image coordinates.
    """
    device = proposals[0].device
    topk_boxes, topk_scores, level_ids = [], [], []
    for level, (boxes_l, logits_l) in enumerate(zip(proposals, pred_objectness)):
        num = min(pre_nms_topk, logits_l.shape[1])
        logits_l, order = logits_l.sort(descending=True, dim=1)
        order = order[:, :num]
        batch = torch.arange(boxes_l.shape[0], device=device)[:, None]
        topk_boxes.append(boxes_l[batch, order])
        topk_scores.append(logits_l[:, :num])
        level_ids.append(torch.full((num,), level, dtype=torch.int64, device=device))
    topk_boxes = torch.cat(topk_boxes, dim=1)
    topk_scores = torch.cat(topk_scores, dim=1)
    level_ids = torch.cat(level_ids)

    results = []
    for boxes_t, scores, image_size in zip(topk_boxes, topk_scores, image_sizes):
        levels = level_ids
        finite = torch.isfinite(boxes_t).all(dim=1) & torch.isfinite(scores)
        if not finite.all():
            boxes_t, scores, levels = boxes_t[finite], scores[finite], levels[finite]
        boxes = Boxes(boxes_t.clone())
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=min_box_side_len)
        if not keep.all():
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes.tensor, scores, levels, nms_thresh)[:post_nms_topk]
        results.append(
            Instances(tuple(image_size), proposal_boxes=boxes[keep], objectness_logits=scores[keep])
        )
    return results
