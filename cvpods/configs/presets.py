"""Settings shared by groups of experiments in cvpods_playground/.

An experiment's ``config.py`` registers these on top of :class:`FCOSConfig` and then its own
differences (head type and depth, budget lambda, ...).
"""

from __future__ import annotations

from .base_detection_config import SHAPES_DEFAULTS

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
    # Written for 8 GPUs at 2 images each; on N processes the solver is scaled by N/8 (linear
    # rule, cvpods.configs.scaling) as in the release.
    SOLVER=dict(
        IMS_PER_BATCH=16,
        IMS_PER_DEVICE=2,
        BASE_LR=0.01,
        STEPS=(60000, 80000),
        MAX_ITER=90000,
    ),
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

#: The CPU experiments on the embedded shapes dataset: a thin ResNet-18 with GroupNorm trained from
#: scratch, FPN and head width 64, multi-scale training at short side 224-288, tested at 320. One
#: schedule for every shapes FCOS experiment: 360 iterations of batch 8 (LR x0.1 at 290): 9-13
#: minutes on 2 idle CPU cores for the D4 heads (1.4-2.2 s per iteration, depending on the host).
#: AdamW (LR 1e-3, weight decay 0.05) instead of the release's SGD: from scratch and in 360
#: iterations it reaches about 6 AP more with FCOS D2 and 9 more with the dynamic D4 head (see
#: README, "CPU experiments on the embedded shapes dataset").
SHAPES_R18_GN_FROM_SCRATCH = dict(
    MODEL=dict(
        # Trained from scratch: no ImageNet weights, nothing frozen.
        WEIGHTS="",
        BACKBONE=dict(FREEZE_AT=0),
        RESNETS=dict(
            DEPTH=18,
            NORM="GN",
            STEM_OUT_CHANNELS=32,
            RES2_OUT_CHANNELS=32,
            ZERO_INIT_RESIDUAL=True,
        ),
        FPN=dict(OUT_CHANNELS=64),
        FCOS=dict(
            NUM_CLASSES=7,
            CENTERNESS_ON_REG=True,
            NORM_REG_TARGETS=True,
            IOU_LOSS_TYPE="giou",
            CENTER_SAMPLING_RADIUS=1.5,
        ),
    ),
    DATASETS=dict(
        TRAIN=("shapes_train",),
        TEST=("shapes_val",),
        SHAPES=dict(SHAPES_DEFAULTS),
    ),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(
        OPTIMIZER_NAME="AdamW",
        IMS_PER_BATCH=8,
        BASE_LR=0.001,
        WEIGHT_DECAY=0.05,
        WARMUP_ITERS=80,
        STEPS=(290,),
        MAX_ITER=360,
        CHECKPOINT_PERIOD=100,
        CHECKPOINT_MAX_KEEP=1,
        # One norm over all gradients (what these experiments were tuned and measured with).
        CLIP_GRADIENTS=dict(ENABLED=True, CLIP_TYPE="full_model", CLIP_VALUE=5.0),
    ),
    INPUT=dict(
        AUG=dict(
            TRAIN_PIPELINES=[
                (
                    "ResizeShortestEdge",
                    dict(short_edge_length=(224, 256, 288), max_size=448, sample_style="choice"),
                ),
                ("RandomFlip", dict()),
            ],
            TEST_PIPELINES=[
                (
                    "ResizeShortestEdge",
                    dict(short_edge_length=320, max_size=480, sample_style="choice"),
                ),
            ],
        )
    ),
    SEED=0,
    OUTPUT_DIR="./log",
)

#: How the dynamic heads of the shapes experiments learn their gates within a 360-iteration
#: schedule (the release's COCO schedule is 250 times longer). The release's gates start open
#: (0.99) where GeReTanH is nearly flat, so at the release's learning rate the budget loss moves
#: them too little in a few hundred iterations: the computed fraction stalls around 0.65. The gate
#: convs therefore learn 10x faster (SOLVER.GATE_LR_FACTOR), and the budget loss weight ramps up
#: over the first 150 iterations (MODEL.FCOS.BUDGET_LOSS_WARMUP_ITERS) so that the head learns its
#: features before the gates close. Lambda keeps its meaning (the weight of the cost relative to
#: the detection losses). Register after RELEASE_GATES and the experiment's own lambda.
SHAPES_GATE_LEARNING = dict(
    MODEL=dict(FCOS=dict(BUDGET_LOSS_WARMUP_ITERS=150)),
    SOLVER=dict(GATE_LR_FACTOR=10.0),
)

#: :data:`SHAPES_GATE_LEARNING` for the dynamic RPN head of the shapes Faster R-CNN experiments,
#: whose schedule is 200 iterations: the budget loss ramps in over the first 80.
SHAPES_RPN_GATE_LEARNING = dict(
    MODEL=dict(RPN=dict(BUDGET_LOSS_WARMUP_ITERS=80)),
    SOLVER=dict(GATE_LR_FACTOR=10.0),
)

#: Faster R-CNN R50-FPN on COCO 2017, 1x, multi-scale training: the upstream cvpods playground
#: experiment ``faster_rcnn.res50.fpn.coco.multiscale.1x`` (published COCO val AP 38.06), on top
#: of :class:`~cvpods.configs.RCNNFPNConfig`. BASE_LR 0.02 for 16 images (8 GPUs x 2).
COCO_FASTER_RCNN_R50_FPN_MULTISCALE_1X = dict(
    MODEL=dict(
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        MASK_ON=False,
        RESNETS=dict(DEPTH=50),
        ROI_HEADS=dict(NUM_CLASSES=80),
    ),
    DATASETS=dict(TRAIN=("coco_2017_train",), TEST=("coco_2017_val",)),
    SOLVER=dict(
        IMS_PER_BATCH=16,
        IMS_PER_DEVICE=2,
        BASE_LR=0.02,
        STEPS=(60000, 80000),
        MAX_ITER=90000,
    ),
    INPUT=dict(
        AUG=dict(
            TRAIN_PIPELINES=[
                (
                    "ResizeShortestEdge",
                    dict(
                        short_edge_length=(640, 672, 704, 736, 768, 800),
                        max_size=1333,
                        sample_style="choice",
                    ),
                ),
                ("RandomFlip", dict()),
            ],
            TEST_PIPELINES=[
                (
                    "ResizeShortestEdge",
                    dict(short_edge_length=800, max_size=1333, sample_style="choice"),
                ),
            ],
        )
    ),
    OUTPUT_DIR="./log",
)

#: The spatial gates of the dynamic RPN head (those of the release's dynamic FCOS heads).
RPN_RELEASE_GATES = dict(
    MODEL=dict(
        RPN=dict(
            NUM_GROUPS=1,
            GATE_ACTIVATION="GeReTanH",
            GATE_ACTIVATION_KARGS=dict(tau=1.5),
            RESIZE_METHOD="bilinear",
        )
    )
)


def _without_fcos(preset: dict) -> dict:
    """``preset`` with its MODEL.FCOS part left out (for the two-stage experiments)."""
    model = {k: v for k, v in preset["MODEL"].items() if k != "FCOS"}
    return {**preset, "MODEL": model}


#: Faster R-CNN on the embedded shapes dataset: the backbone, data and optimizer (AdamW, LR 1e-3,
#: weight decay 0.05) of :data:`SHAPES_R18_GN_FROM_SCRATCH`, with anchors one octave smaller
#: (16-256 px, the shapes' sizes at 224-288 px inputs) and fewer proposals and sampled ROIs, to
#: suit the small CPU budget. The schedule is shorter: 200 iterations of batch 8 (warm-up 50, LR
#: x0.1 at 160), so that the deep RPN heads, which run on p2-p6 at twice the cost of an FCOS D4
#: head, train in under 15 minutes on 2 CPU cores (about 3.5 s per iteration for the fixed D4 RPN
#: head, 4.1-4.5 s for the dynamic ones, whose training computes the gates as well).
SHAPES_R18_GN_FASTER_RCNN = _without_fcos(SHAPES_R18_GN_FROM_SCRATCH)
SHAPES_R18_GN_FASTER_RCNN["SOLVER"] = {
    **SHAPES_R18_GN_FROM_SCRATCH["SOLVER"],
    "WARMUP_ITERS": 50,
    "STEPS": (160,),
    "MAX_ITER": 200,
}
SHAPES_R18_GN_FASTER_RCNN["MODEL"].update(
    ANCHOR_GENERATOR=dict(SIZES=[[16], [32], [64], [128], [256]]),
    RPN=dict(
        PRE_NMS_TOPK_TRAIN=1000,
        POST_NMS_TOPK_TRAIN=500,
        PRE_NMS_TOPK_TEST=500,
        POST_NMS_TOPK_TEST=300,
    ),
    ROI_HEADS=dict(NUM_CLASSES=7, BATCH_SIZE_PER_IMAGE=128),
    ROI_BOX_HEAD=dict(FC_DIM=256),
)
