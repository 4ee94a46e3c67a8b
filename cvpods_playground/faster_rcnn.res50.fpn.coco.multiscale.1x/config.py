"""Faster R-CNN, ResNet-50-FPN, COCO 2017, 1x schedule, multi-scale training (short side
640-800): the upstream cvpods experiment of the same name (published COCO val bbox AP 38.06).
"""

from cvpods.configs import RCNNFPNConfig
from cvpods.configs.presets import COCO_FASTER_RCNN_R50_FPN_MULTISCALE_1X


class ExperimentConfig(RCNNFPNConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(COCO_FASTER_RCNN_R50_FPN_MULTISCALE_1X)


config = ExperimentConfig()
