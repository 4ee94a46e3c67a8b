"""Fine-grained dynamic FCOS head
(depth D8, no budget loss) on COCO 2017, ResNet-50-FPN, 1x schedule (90k iterations, batch 16)."""

from cvpods.configs import FCOSConfig

_config_dict = dict(
    MODEL=dict(
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        RESNETS=dict(DEPTH=50),
        FCOS=dict(
            NUM_CONVS=16,
            CENTERNESS_ON_REG=True,
            NORM_REG_TARGETS=True,
            NMS_THRESH_TEST=0.6,
            IOU_LOSS_TYPE="giou",
            CENTER_SAMPLING_RADIUS=1.5,
            NUM_GROUPS=1,
            GATE_ACTIVATION="GeReTanH",
            GATE_ACTIVATION_KARGS=dict(tau=1.5),
            RESIZE_METHOD="bilinear",
            BUDGET_LOSS_LAMBDA=0.0,
        ),
    ),
    DATASETS=dict(TRAIN=("coco_2017_train",), TEST=("coco_2017_val",)),
    SOLVER=dict(IMS_PER_BATCH=16, BASE_LR=0.01, STEPS=(60000, 80000), MAX_ITER=90000),
    INPUT=dict(
        AUG=dict(
            TRAIN_PIPELINES=[
                (
                    "ResizeShortestEdge",
                    dict(short_edge_length=(800,), max_size=1333, sample_style="choice"),
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


class ExperimentConfig(FCOSConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(_config_dict)


config = ExperimentConfig()
