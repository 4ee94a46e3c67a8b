"""Region Proposal Network (Ren et al., Faster R-CNN): objectness and box deltas for anchors on
every FPN level, decoded into per-image proposals for the ROI heads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...configs import configurable
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
    """The RPN of cvpods: ``anchor_generator`` + ``rpn_head`` over the levels ``in_features``.

    ``forward(images, features, gt_instances)`` returns ``(proposals, outputs)``: per image
    Instances with ``proposal_boxes`` and ``objectness_logits`` (input-image coordinates), and a
    dict holding in training ``loss_rpn_cls`` / ``loss_rpn_loc`` (times ``loss_weight``),
    plus ``loss_budget`` for a dynamic head with ``budget_loss_lambda != 0``; for a dynamic
    head, also ``head_cost`` (:class:`~cvpods.layers.GateCost`, ``[N]`` MACs, detached) and, at
    evaluation with ``return_gate_maps``, ``gate_maps`` and ``fusion_gate_maps`` (per level
    ``[N, H_l, W_l]``: the fraction of depth cells / scale-fusion units computed).

    Build it from a config, ``RPN(cfg, input_shape)`` (MODEL.RPN, MODEL.ANCHOR_GENERATOR,
    MODEL.PROPOSAL_GENERATOR.MIN_SIZE; the head named by MODEL.RPN.HEAD_NAME), or with:

    Args:
        in_features: the feature maps (names of the backbone's outputs) the RPN reads, finest first.
        head: the RPN head (e.g. :class:`StandardRPNHead`): per-level features ->
            :class:`RPNHeadOutputs`.
        anchor_generator: the anchors of those levels (its strides are theirs).
        box2box_transform: encodes the anchor -> box deltas.
        anchor_matcher: labels anchors by their IoU with the ground truth (1 object,
            0 background, -1 ignored).
        batch_size_per_image: anchors sampled per image for the losses.
        positive_fraction: at most this share of them are objects.
        pre_nms_topk: ``(training, evaluation)``: proposals kept per level before NMS.
        post_nms_topk: ``(training, evaluation)``: proposals kept per image after NMS.
        nms_thresh: IoU of the proposals' NMS (within a level).
        min_box_size: proposals with a side not above this (input pixels) are dropped.
        smooth_l1_beta: the box loss's smooth L1 beta (0: L1).
        loss_weight: factor of both RPN losses.
        boundary_threshold: anchors beyond the image by more than this many pixels are
            ignored in training (< 0: keep all).
        budget_loss_lambda: weight of a gated head's budget loss (0: none).
        budget_loss_warmup_iters: iterations over which that weight ramps up from 0.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        head: nn.Module,
        anchor_generator: DefaultAnchorGenerator,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: Matcher,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: tuple[int, int],
        post_nms_topk: tuple[int, int],
        nms_thresh: float,
        min_box_size: float = 0.0,
        smooth_l1_beta: float = 0.0,
        loss_weight: float = 1.0,
        boundary_threshold: int = -1,
        budget_loss_lambda: float = 0.0,
        budget_loss_warmup_iters: int = 0,
    ) -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.min_box_side_len = min_box_size
        self.nms_thresh = nms_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight
        self.budget_loss_lambda = budget_loss_lambda
        self.budget_loss_warmup_iters = budget_loss_warmup_iters
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.boundary_threshold = boundary_threshold

        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.rpn_head = head

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        """The keyword arguments of ``RPN`` from the config, for the backbone outputs
        ``input_shape`` (name -> :class:`~cvpods.layers.ShapeSpec`)."""
        rpn = cfg.MODEL.RPN
        in_features = list(rpn.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.RPN.IN_FEATURES {missing} are not backbone outputs {list(input_shape)}"
            )
        shapes = [input_shape[f] for f in in_features]
        anchor_generator = DefaultAnchorGenerator(
            **DefaultAnchorGenerator.from_config(cfg, [s.stride for s in shapes])
        )
        return dict(
            in_features=in_features,
            head=build_rpn_head(cfg, shapes, anchor_generator.num_cell_anchors),
            anchor_generator=anchor_generator,
            box2box_transform=Box2BoxTransform(rpn.BBOX_REG_WEIGHTS),
            anchor_matcher=Matcher(
                rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, allow_low_quality_matches=True
            ),
            batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE,
            positive_fraction=rpn.POSITIVE_FRACTION,
            pre_nms_topk=(rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
            post_nms_topk=(rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
            nms_thresh=rpn.NMS_THRESH,
            min_box_size=cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            smooth_l1_beta=rpn.SMOOTH_L1_BETA,
            loss_weight=rpn.LOSS_WEIGHT,
            boundary_threshold=rpn.BOUNDARY_THRESH,
            budget_loss_lambda=rpn.BUDGET_LOSS_LAMBDA,
            budget_loss_warmup_iters=rpn.get("BUDGET_LOSS_WARMUP_ITERS", 0),
        )

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        gt_instances: list[Instances] | None = None,
        return_gate_maps: bool = False,
    ) -> tuple[list[Instances], dict[str, Any]]:
        """Proposals for a batch, and the losses (training) / the head's cost and gate maps.

        Args:
            images: the padded batch (only ``image_sizes`` is read).
            features: the backbone outputs by name, ``[N, C, H_l, W_l]``.
            gt_instances: per image, ``gt_boxes`` (input pixels); required in training.
            return_gate_maps: at evaluation, also return a gated head's gate maps.

        Returns:
            ``(proposals, outputs)`` as described in the class docstring.
        """
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
