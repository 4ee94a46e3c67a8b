"""Region Proposal Network (Ren et al., Faster R-CNN): objectness and box deltas for anchors on
every FPN level, decoded into per-image proposals for the ROI heads."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...layers import ShapeSpec
from ...structures import Boxes, ImageList, Instances
from ...utils.events import put_scalar_if_recording
from ..anchor_generator import DefaultAnchorGenerator
from ..box_regression import Box2BoxTransform
from ..losses import budget_loss
from ..matcher import Matcher
from ..postprocessing import batch_head_cost
from .rpn_heads import build_rpn_head
from .rpn_outputs import (
    decode_proposals,
    find_top_rpn_proposals,
    flatten_anchor_deltas,
    flatten_objectness,
    label_anchors,
    rpn_losses,
    sample_anchors,
)

logger = logging.getLogger(__name__)


class RPN(nn.Module):
    """The RPN of cvpods: ``anchor_generator`` + ``rpn_head`` over MODEL.RPN.IN_FEATURES.

    ``forward(images, features, gt_instances)`` returns ``(proposals, outputs)``: per image
    Instances with ``proposal_boxes`` and ``objectness_logits`` (input-image coordinates), and a
    dict holding in training ``loss_rpn_cls`` / ``loss_rpn_loc`` (times MODEL.RPN.LOSS_WEIGHT),
    plus ``loss_budget`` for a dynamic head with MODEL.RPN.BUDGET_LOSS_LAMBDA != 0; for a dynamic
    head, also ``head_cost`` (:class:`~cvpods.layers.GateCost`, ``[N]`` MACs, detached) and, at
    evaluation with ``return_gate_maps``, ``gate_maps`` and ``fusion_gate_maps`` (per level
    ``[N, H_l, W_l]``: the fraction of depth cells / scale-fusion units computed).
    """

    def __init__(self, cfg, input_shape: dict[str, ShapeSpec]) -> None:
        super().__init__()
        rpn = cfg.MODEL.RPN
        self.in_features = list(rpn.IN_FEATURES)
        missing = [f for f in self.in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.RPN.IN_FEATURES {missing} are not backbone outputs {list(input_shape)}"
            )
        shapes = [input_shape[f] for f in self.in_features]
        self.min_box_side_len = cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE
        self.nms_thresh = rpn.NMS_THRESH
        self.batch_size_per_image = rpn.BATCH_SIZE_PER_IMAGE
        self.positive_fraction = rpn.POSITIVE_FRACTION
        self.smooth_l1_beta = rpn.SMOOTH_L1_BETA
        self.loss_weight = rpn.LOSS_WEIGHT
        self.budget_loss_lambda = rpn.BUDGET_LOSS_LAMBDA
        self.budget_loss_warmup_iters = rpn.get("BUDGET_LOSS_WARMUP_ITERS", 0)
        self.pre_nms_topk = {True: rpn.PRE_NMS_TOPK_TRAIN, False: rpn.PRE_NMS_TOPK_TEST}
        self.post_nms_topk = {True: rpn.POST_NMS_TOPK_TRAIN, False: rpn.POST_NMS_TOPK_TEST}
        self.boundary_threshold = rpn.BOUNDARY_THRESH

        self.anchor_generator = DefaultAnchorGenerator.from_config(cfg, [s.stride for s in shapes])
        self.box2box_transform = Box2BoxTransform(rpn.BBOX_REG_WEIGHTS)
        self.anchor_matcher = Matcher(
            rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, allow_low_quality_matches=True
        )
        self.rpn_head = build_rpn_head(cfg, shapes, self.anchor_generator.num_cell_anchors)

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        gt_instances: list[Instances] | None = None,
        return_gate_maps: bool = False,
    ) -> tuple[list[Instances], dict[str, Any]]:
        features = [features[f] for f in self.in_features]
        outputs = self.rpn_head(features, return_gate_maps=return_gate_maps and not self.training)
        anchors = self.anchor_generator(features)
        pred_objectness = flatten_objectness(outputs.objectness_logits)
        pred_deltas = flatten_anchor_deltas(outputs.anchor_deltas)

        losses: dict[str, torch.Tensor] = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("the RPN in training mode needs the ground-truth instances")
            losses = self.losses(anchors, pred_objectness, pred_deltas, gt_instances, images)
            cost = outputs.cost
            if cost is not None:
                put_scalar_if_recording(
                    "rpn_complexity_ratio", (cost.used / cost.full).mean().item()
                )
                if self.budget_loss_lambda != 0:
                    losses["loss_budget"] = budget_loss(
                        cost, self.budget_loss_lambda, self.budget_loss_warmup_iters
                    )
        losses.update(batch_head_cost(outputs.cost))
        if outputs.gate_maps is not None:
            losses["gate_maps"] = outputs.gate_maps
        if outputs.fusion_gate_maps is not None:
            losses["fusion_gate_maps"] = outputs.fusion_gate_maps

        proposals = find_top_rpn_proposals(
            decode_proposals(anchors, pred_deltas, self.box2box_transform),
            [x.detach() for x in pred_objectness],
            images.image_sizes,
            self.nms_thresh,
            self.pre_nms_topk[self.training],
            self.post_nms_topk[self.training],
            self.min_box_side_len,
        )
        return proposals, losses

    def losses(
        self,
        anchors: list[Boxes],
        pred_objectness: list[torch.Tensor],
        pred_deltas: list[torch.Tensor],
        gt_instances: list[Instances],
        images: ImageList,
    ) -> dict[str, torch.Tensor]:
        """Label and sample the anchors, then :func:`rpn_losses` over the batch."""
        gt_labels, gt_deltas = label_anchors(
            Boxes.cat(anchors),
            gt_instances,
            images.image_sizes,
            self.anchor_matcher,
            self.box2box_transform,
            self.boundary_threshold,
        )
        gt_labels = sample_anchors(gt_labels, self.batch_size_per_image, self.positive_fraction)
        num_images = len(gt_instances)
        losses = rpn_losses(
            gt_labels,
            gt_deltas,
            torch.cat(pred_objectness, dim=1),
            torch.cat(pred_deltas, dim=1),
            self.smooth_l1_beta,
            normalizer=float(self.batch_size_per_image * num_images),
        )
        return {k: v * self.loss_weight for k, v in losses.items()}
