"""FCOS baseline (the standard 4-conv FCOS head) on the embedded shapes dataset: a thin
ResNet-18-GN-FPN trained from scratch on a 2-core CPU, same schedule as the dynamic experiment."""

from cvpods.configs import FCOSConfig

_config_dict = dict(
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
            NUM_CONVS=4,
            CENTERNESS_ON_REG=True,
            NORM_REG_TARGETS=True,
            IOU_LOSS_TYPE="giou",
            CENTER_SAMPLING_RADIUS=1.5,
        ),
    ),
    DATASETS=dict(
        TRAIN=("shapes_train",),
        TEST=("shapes_val",),
        SHAPES=dict(NUM_TRAIN=2000, NUM_VAL=200, MIN_SIZE=256, MAX_SIZE=384, SEED=0),
    ),
    DATALOADER=dict(NUM_WORKERS=1),
    SOLVER=dict(
        IMS_PER_BATCH=8,
        BASE_LR=0.02,
        WARMUP_ITERS=100,
        STEPS=(400,),
        MAX_ITER=500,
        CHECKPOINT_PERIOD=100,
        CHECKPOINT_MAX_KEEP=1,
        CLIP_GRADIENTS=dict(ENABLED=True, CLIP_TYPE="norm", CLIP_VALUE=5.0),
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


class ExperimentConfig(FCOSConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(_config_dict)


config = ExperimentConfig()
