"""ROI heads: sample proposals against the ground truth, pool their features, classify and refine."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ...configs import configurable
from ...layers import ShapeSpec
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ..box_regression import Box2BoxTransform
from ..matcher import Matcher
from ..poolers import ROIPooler
from ..sampling import subsample_labels
from .box_head import FastRCNNConvFCHead
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference, fast_rcnn_losses


def add_ground_truth_to_proposals(
    gt_instances: Sequence[Instances], proposals: Sequence[Instances]
) -> list[Instances]:
    """Append each image's ground-truth boxes to its proposals (objectness logit ~ +23, i.e.
    probability ``1 - 1e-10``), so that every ground truth has a perfect proposal in training."""
    out = []
    for gt, props in zip(gt_instances, proposals):
        device = props.objectness_logits.device
        gt_logit = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))
        gt_proposals = Instances(
            props.image_size,
            proposal_boxes=Boxes(gt.gt_boxes.tensor.to(device)),
            objectness_logits=gt_logit * torch.ones(len(gt), device=device),
        )
        out.append(Instances.cat([props, gt_proposals]))
    return out


class StandardROIHeads(nn.Module):
    """cvpods' StandardROIHeads, box branch only: ``box_pooler`` (ROIAlignV2 over
    MODEL.ROI_HEADS.IN_FEATURES), ``box_head`` (:class:`FastRCNNConvFCHead`) and
    ``box_predictor`` (:class:`FastRCNNOutputLayers`).

    ``forward(images, features, proposals, targets)`` returns ``(proposals, losses)`` in training
    (the sampled proposals, ``loss_cls`` / ``loss_box_reg``) and ``(detections, {})`` in evaluation:
    per image Instances with ``pred_boxes`` (input-image coordinates), ``scores``, ``pred_classes``.

    Build it from a config, ``StandardROIHeads(cfg, input_shape)`` (MODEL.ROI_HEADS,
    MODEL.ROI_BOX_HEAD, TEST.DETECTIONS_PER_IMAGE), or with:

    Args:
        in_features: the backbone outputs the pooler reads (finest first).
        num_classes: K foreground classes (index K is background).
        box_pooler: pools each proposal's features from those levels: ``[R, C, S, S]``.
        box_head: pooled features -> one feature vector per ROI.
        box_predictor: that vector -> class logits ``[R, K + 1]`` and box deltas.
        proposal_matcher: labels proposals by IoU with the ground truth (training).
        box2box_transform: encodes the proposal -> box deltas.
        batch_size_per_image: proposals sampled per image for the losses.
        positive_fraction: at most this share of them are foreground.
        test_score_thresh: detections with a lower class probability are dropped.
        test_nms_thresh: IoU of the per-class NMS.
        test_detections_per_img: detections kept per image (< 0: all).
        proposal_append_gt: add the ground-truth boxes to the proposals in training.
        smooth_l1_beta: the box loss's smooth L1 beta (0: L1).
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        num_classes: int,
        box_pooler: ROIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        proposal_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        test_score_thresh: float,
        test_nms_thresh: float,
        test_detections_per_img: int,
        proposal_append_gt: bool = True,
        smooth_l1_beta: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_features = list(in_features)
        self.batch_size_per_image = batch_size_per_image
        self.positive_sample_fraction = positive_fraction
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_detections_per_img = test_detections_per_img
        self.proposal_append_gt = proposal_append_gt
        self.proposal_matcher = proposal_matcher
        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        """The keyword arguments from the config, for the backbone outputs ``input_shape``
        (name -> :class:`~cvpods.layers.ShapeSpec`; the levels need the same channel count)."""
        r = cfg.MODEL.ROI_HEADS
        h = cfg.MODEL.ROI_BOX_HEAD
        in_features = list(r.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES {missing} are not backbone outputs {list(input_shape)}"
            )
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"ROI heads need the same channels on every level, got {channels}")
        in_channels = channels.pop()
        resolution = h.POOLER_RESOLUTION
        box_pooler = ROIPooler(
            output_size=resolution,
            scales=[1.0 / input_shape[f].stride for f in in_features],
            sampling_ratio=h.POOLER_SAMPLING_RATIO,
            pooler_type=h.POOLER_TYPE,
        )
        if h.NAME != "FastRCNNConvFCHead":
            raise ValueError(
                f"unknown MODEL.ROI_BOX_HEAD.NAME {h.NAME!r}; expected 'FastRCNNConvFCHead'"
            )
        box_head = FastRCNNConvFCHead(
            cfg, ShapeSpec(channels=in_channels, height=resolution, width=resolution)
        )
        output_size = box_head.output_size
        if not isinstance(output_size, int):
            output_size = output_size[0] * output_size[1] * output_size[2]
        return dict(
            in_features=in_features,
            num_classes=r.NUM_CLASSES,
            box_pooler=box_pooler,
            box_head=box_head,
            box_predictor=FastRCNNOutputLayers(output_size, r.NUM_CLASSES, h.CLS_AGNOSTIC_BBOX_REG),
            proposal_matcher=Matcher(
                r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=False
            ),
            box2box_transform=Box2BoxTransform(h.BBOX_REG_WEIGHTS),
            batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
            positive_fraction=r.POSITIVE_FRACTION,
            test_score_thresh=r.SCORE_THRESH_TEST,
            test_nms_thresh=r.NMS_THRESH_TEST,
            test_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
            proposal_append_gt=r.PROPOSAL_APPEND_GT,
            smooth_l1_beta=h.SMOOTH_L1_BETA,
        )

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: list[Instances], targets: list[Instances]
    ) -> list[Instances]:
        """Per image: (ground truth appended,) match to the ground truth and draw
        BATCH_SIZE_PER_IMAGE proposals with at most POSITIVE_FRACTION foreground. Adds
        ``gt_classes`` (K = background) and ``gt_boxes`` (zeros for an image without boxes)."""
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        sampled = []
        for props, gt in zip(proposals, targets):
            matched, match_labels = self.proposal_matcher(
                pairwise_iou(gt.gt_boxes, props.proposal_boxes)
            )
            has_gt = len(gt) > 0
            if has_gt:
                gt_classes = gt.gt_classes[matched].clone()
                gt_classes[match_labels == 0] = self.num_classes
                gt_classes[match_labels == -1] = -1
            else:
                gt_classes = torch.full_like(matched, self.num_classes)
            fg, bg = subsample_labels(
                gt_classes,
                self.batch_size_per_image,
                self.positive_sample_fraction,
                self.num_classes,
            )
            indices = torch.cat([fg, bg])
            out = props[indices]
            out.gt_classes = gt_classes[indices]
            if has_gt:
                out.gt_boxes = gt.gt_boxes[matched[indices]]
            else:
                out.gt_boxes = Boxes(props.proposal_boxes.tensor.new_zeros((len(indices), 4)))
            sampled.append(out)
        return sampled

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """Training: sample the proposals, return them and the losses. Evaluation: detections.

        Args:
            images: the padded batch (unused; the cvpods signature).
            features: the backbone outputs by name, ``[N, C, H_l, W_l]``.
            proposals: per image, Instances with ``proposal_boxes`` (input pixels) and
                ``objectness_logits``.
            targets: per image, ``gt_boxes`` and ``gt_classes``; required in training.

        Returns:
            see the class docstring.
        """
        if self.training:
            if targets is None:
                raise ValueError("the ROI heads in training mode need the ground-truth instances")
            proposals = self.label_and_sample_proposals(proposals, targets)
        level_features = [features[f] for f in self.in_features]
        box_features = self.box_pooler(level_features, [p.proposal_boxes for p in proposals])
        box_features = self.box_head(box_features)
        logits, deltas = self.box_predictor(box_features)
        if self.training:
            losses = fast_rcnn_losses(
                logits, deltas, proposals, self.box2box_transform, self.smooth_l1_beta
            )
            return proposals, losses
        detections = fast_rcnn_inference(
            logits,
            deltas,
            proposals,
            self.box2box_transform,
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_detections_per_img,
        )
        return detections, {}
