"""Fixed deep FCOS head, depth D8.

COCO 2017, ResNet-50-FPN, 1x schedule: the release's settings (cvpods.configs.presets).
"""

from cvpods.configs import FCOSConfig
from cvpods.configs.presets import COCO_FCOS_R50_1X


class ExperimentConfig(FCOSConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(COCO_FCOS_R50_1X)
        self._register_configuration(
            dict(MODEL=dict(FCOS=dict(HEAD_NAME="FCOSFixHead", NUM_CONVS=16)))
        )


config = ExperimentConfig()
