"""Settings shared by the official experiments of the Fine-Grained Dynamic Head release.

An experiment's ``config.py`` registers these on top of :class:`FCOSConfig` and then its own
differences (head depth, budget lambda, ...).
"""

from __future__ import annotations

#: COCO 2017, ResNet-50 from MSRA ImageNet weights, 1x schedule (90k iterations of 16 images), and
#: the improved FCOS every release experiment uses: centerness on the regression branch,
#: stride-normalised regression targets, GIoU loss, centre sampling. The input pipelines are the
#: library defaults (shortest edge 800, max 1333, horizontal flip).
COCO_FCOS_R50_1X = dict(
    MODEL=dict(
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        RESNETS=dict(DEPTH=50),
        FCOS=dict(
            CENTERNESS_ON_REG=True,
            NORM_REG_TARGETS=True,
            NMS_THRESH_TEST=0.6,
            IOU_LOSS_TYPE="giou",
            CENTER_SAMPLING_RADIUS=1.5,
        ),
    ),
    DATASETS=dict(TRAIN=("coco_2017_train",), TEST=("coco_2017_val",)),
    SOLVER=dict(IMS_PER_BATCH=16, BASE_LR=0.01, STEPS=(60000, 80000), MAX_ITER=90000),
    OUTPUT_DIR="./log",
)

#: The spatial gates of the release's dynamic heads (its fixed heads use the same resizing).
RELEASE_GATES = dict(
    MODEL=dict(
        FCOS=dict(
            NUM_GROUPS=1,
            GATE_ACTIVATION="GeReTanH",
            GATE_ACTIVATION_KARGS=dict(tau=1.5),
            RESIZE_METHOD="bilinear",
        )
    )
)
