"""Faster R-CNN (standard RPN head) on the embedded shapes dataset: a thin ResNet-18-GN-FPN
trained from scratch on a 2-core CPU, the schedule of the shapes FCOS experiments."""

from cvpods.configs import RCNNFPNConfig
from cvpods.configs.presets import SHAPES_R18_GN_FASTER_RCNN


class ExperimentConfig(RCNNFPNConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(SHAPES_R18_GN_FASTER_RCNN)


config = ExperimentConfig()
