"""Defaults of Faster R-CNN with FPN (cvpods' RCNNFPNConfig key names), and of the deep RPN heads."""

from __future__ import annotations

from .base_detection_config import BaseDetectionConfig

_RCNN_FPN_DEFAULTS = dict(
    MODEL=dict(
        # The detector cvpods.modeling.build_model builds (a name in META_ARCH_REGISTRY).
        META_ARCHITECTURE="GeneralizedRCNN",
        # No mask branch here (box detection only); kept for cvpods compatibility.
        MASK_ON=False,
        LOAD_PROPOSALS=False,
        RESNETS=dict(OUT_FEATURES=["res2", "res3", "res4", "res5"]),
        FPN=dict(IN_FEATURES=["res2", "res3", "res4", "res5"]),
        ANCHOR_GENERATOR=dict(
            # Anchor sizes (sqrt of area, input pixels): one list per level, or one for all.
            SIZES=[[32], [64], [128], [256], [512]],
            # Height / width ratios: one list per level, or one for all.
            ASPECT_RATIOS=[[0.5, 1.0, 2.0]],
            # Anchor centres at (cell + OFFSET) * stride, OFFSET in [0, 1).
            OFFSET=0.0,
        ),
        PROPOSAL_GENERATOR=dict(
            NAME="RPN",
            # Proposals with a side not above this (input pixels) are dropped.
            MIN_SIZE=0,
        ),
        RPN=dict(
            # The head (a name in RPN_HEAD_REGISTRY): "StandardRPNHead" (one 3x3 conv),
            # "FixRPNHead" (static deep head) or "DynamicRPNHead" (fine-grained dynamic head).
            HEAD_NAME="StandardRPNHead",
            IN_FEATURES=["p2", "p3", "p4", "p5", "p6"],
            # Anchors beyond the image by more than this many pixels are ignored (< 0: keep all).
            BOUNDARY_THRESH=-1,
            # IoU intervals and their labels (0 background, -1 ignored, 1 object).
            IOU_THRESHOLDS=[0.3, 0.7],
            IOU_LABELS=[0, -1, 1],
            # Anchors sampled per image for the losses, and the share of objects among them.
            BATCH_SIZE_PER_IMAGE=256,
            POSITIVE_FRACTION=0.5,
            BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
            # 0: L1 loss.
            SMOOTH_L1_BETA=0.0,
            LOSS_WEIGHT=1.0,
            # Per level before NMS, per image after NMS.
            PRE_NMS_TOPK_TRAIN=2000,
            PRE_NMS_TOPK_TEST=1000,
            POST_NMS_TOPK_TRAIN=1000,
            POST_NMS_TOPK_TEST=1000,
            NMS_THRESH=0.7,
            # Deep RPN heads: NUM_CONVS // 2 stages of (scale fusion + depth cell); D4 = 8.
            NUM_CONVS=2,
            # Norm of the deep heads' units ("GN" as in the dynamic FCOS head).
            NORM="GN",
            # Fine-grained dynamic RPN head: gate maps per unit, gate activation.
            NUM_GROUPS=1,
            GATE_ACTIVATION="GeReTanH",
            GATE_ACTIVATION_KARGS=dict(tau=1.5),
            RESIZE_METHOD="bilinear",
            # Weight of the FLOPs-budget loss of the dynamic RPN head (0: none).
            BUDGET_LOSS_LAMBDA=0.0,
            # Linear warm-up of the budget loss weight, in iterations (0: none, as in the release).
            BUDGET_LOSS_WARMUP_ITERS=0,
        ),
        ROI_HEADS=dict(
            NAME="StandardROIHeads",
            NUM_CLASSES=80,
            IN_FEATURES=["p2", "p3", "p4", "p5"],
            IOU_THRESHOLDS=[0.5],
            IOU_LABELS=[0, 1],
            # Proposals sampled per image for the losses, and the share of objects among them.
            BATCH_SIZE_PER_IMAGE=512,
            POSITIVE_FRACTION=0.25,
            SCORE_THRESH_TEST=0.05,
            NMS_THRESH_TEST=0.5,
            # Add the ground-truth boxes to the proposals in training.
            PROPOSAL_APPEND_GT=True,
        ),
        ROI_BOX_HEAD=dict(
            NAME="FastRCNNConvFCHead",
            NUM_FC=2,
            FC_DIM=1024,
            NUM_CONV=0,
            CONV_DIM=256,
            NORM="",
            BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
            SMOOTH_L1_BETA=0.0,
            POOLER_RESOLUTION=7,
            # Samples per bin side (0: adaptive, ceil(roi size / bins)).
            POOLER_SAMPLING_RATIO=0,
            # "ROIAlignV2" (aligned, pixel centres at +0.5) or "ROIAlign".
            POOLER_TYPE="ROIAlignV2",
            CLS_AGNOSTIC_BBOX_REG=False,
        ),
    ),
)


class RCNNFPNConfig(BaseDetectionConfig):
    """Defaults of Faster R-CNN R-FPN (cvpods' ``RCNNFPNConfig``) and the deep / dynamic RPN heads."""

    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(_RCNN_FPN_DEFAULTS)
