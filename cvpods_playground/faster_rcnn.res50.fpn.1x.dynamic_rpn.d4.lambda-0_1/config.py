"""Faster R-CNN R50-FPN whose RPN head is the fine-grained dynamic head (depth D4: four stages
of gated scale fusion + gated depth cell), budget lambda 0.1. Otherwise the settings of
``faster_rcnn.res50.fpn.coco.multiscale.1x``.
"""

from cvpods.configs import RCNNFPNConfig
from cvpods.configs.presets import COCO_FASTER_RCNN_R50_FPN_MULTISCALE_1X, RPN_RELEASE_GATES


class ExperimentConfig(RCNNFPNConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(COCO_FASTER_RCNN_R50_FPN_MULTISCALE_1X)
        self._register_configuration(RPN_RELEASE_GATES)
        self._register_configuration(
            dict(
                MODEL=dict(
                    RPN=dict(HEAD_NAME="DynamicRPNHead", NUM_CONVS=8, BUDGET_LOSS_LAMBDA=0.1)
                )
            )
        )


config = ExperimentConfig()
