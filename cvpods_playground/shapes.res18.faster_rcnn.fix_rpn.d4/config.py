"""Faster R-CNN with the static deep RPN head (D4, no gates) on the embedded shapes dataset: the
fair baseline of ``shapes.res18.faster_rcnn.dynamic_rpn.d4.lambda-0_1``."""

from cvpods.configs import RCNNFPNConfig
from cvpods.configs.presets import RPN_RELEASE_GATES, SHAPES_R18_GN_FASTER_RCNN


class ExperimentConfig(RCNNFPNConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(SHAPES_R18_GN_FASTER_RCNN)
        self._register_configuration(RPN_RELEASE_GATES)
        self._register_configuration(
            dict(MODEL=dict(RPN=dict(HEAD_NAME="FixRPNHead", NUM_CONVS=8)))
        )


config = ExperimentConfig()
