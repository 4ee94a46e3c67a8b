"""Defaults of FCOS and of the fine-grained dynamic / fixed deep FCOS heads."""

from __future__ import annotations

from .base_detection_config import BaseDetectionConfig

_FCOS_DEFAULTS = dict(
    MODEL=dict(
        # The detector cvpods.modeling.build_model builds (a name in META_ARCH_REGISTRY).
        META_ARCHITECTURE="FCOS",
        RESNETS=dict(OUT_FEATURES=["res3", "res4", "res5"]),
        FPN=dict(IN_FEATURES=["res3", "res4", "res5"]),
        SHIFT_GENERATOR=dict(
            # Locations per feature-map cell (FCOS uses one).
            NUM_SHIFTS=1,
            # Offset of the first location from the image's top-left corner, in strides ([0, 1)).
            OFFSET=0.0,
        ),
        FCOS=dict(
            # The head (a name in FCOS_HEAD_REGISTRY): "FCOSHead" (the FCOS head, D2 at
            # NUM_CONVS=4), "FCOSFixHead" (static deep head) or "FCOSDynamicHead" (fine-grained
            # dynamic head).
            HEAD_NAME="FCOSHead",
            NUM_CLASSES=80,
            IN_FEATURES=["p3", "p4", "p5", "p6", "p7"],
            # Convs per branch; the deep heads use NUM_CONVS // 2 (scale fusion + depth cell) stages.
            NUM_CONVS=4,
            FPN_STRIDES=[8, 16, 32, 64, 128],
            PRIOR_PROB=0.01,
            CENTERNESS_ON_REG=False,
            # Regress l,t,r,b as relu(x) * stride instead of exp(x).
            NORM_REG_TARGETS=False,
            SCORE_THRESH_TEST=0.05,
            TOPK_CANDIDATES_TEST=1000,
            NMS_THRESH_TEST=0.6,
            BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
            FOCAL_LOSS_GAMMA=2.0,
            FOCAL_LOSS_ALPHA=0.25,
            # "iou", "linear_iou" or "giou".
            IOU_LOSS_TYPE="iou",
            # Foreground only within this many strides of a box centre (0: the whole box).
            CENTER_SAMPLING_RADIUS=0.0,
            # The range of max(l, t, r, b), in pixels, that each level is responsible for.
            OBJECT_SIZES_OF_INTEREST=[
                [-1, 64],
                [64, 128],
                [128, 256],
                [256, 512],
                [512, float("inf")],
            ],
            # Fine-grained dynamic head: gate maps per unit (channels are split among them).
            NUM_GROUPS=1,
            # "ReTanH", "GeReTanH" (needs tau) or "Sigmoid".
            GATE_ACTIVATION="ReTanH",
            GATE_ACTIVATION_KARGS=dict(),
            # How the scale-fusion units bring neighbouring levels to a level's size.
            RESIZE_METHOD="bilinear",
            # Weight of the FLOPs-budget loss (0: no budget loss).
            BUDGET_LOSS_LAMBDA=0.0,
            # Iterations over which the budget loss weight ramps linearly from 0 to
            # BUDGET_LOSS_LAMBDA (0: the full weight from the start, as in the release).
            BUDGET_LOSS_WARMUP_ITERS=0,
        ),
    ),
)


class FCOSConfig(BaseDetectionConfig):
    """Defaults of the FCOS detector (and its dynamic / fixed deep heads)."""

    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(_FCOS_DEFAULTS)
