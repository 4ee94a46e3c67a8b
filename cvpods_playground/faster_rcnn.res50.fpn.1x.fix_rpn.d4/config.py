"""Faster R-CNN R50-FPN whose RPN head is the static deep head of the same topology as the
dynamic one (depth D4, no gates): the fair baseline of
``faster_rcnn.res50.fpn.1x.dynamic_rpn.d4.lambda-0_1``.
"""

from cvpods.configs import RCNNFPNConfig
from cvpods.configs.presets import COCO_FASTER_RCNN_R50_FPN_MULTISCALE_1X, RPN_RELEASE_GATES


class ExperimentConfig(RCNNFPNConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(COCO_FASTER_RCNN_R50_FPN_MULTISCALE_1X)
        self._register_configuration(RPN_RELEASE_GATES)
        self._register_configuration(
            dict(MODEL=dict(RPN=dict(HEAD_NAME="FixRPNHead", NUM_CONVS=8)))
        )


config = ExperimentConfig()
