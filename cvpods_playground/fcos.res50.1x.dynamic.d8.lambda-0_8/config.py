"""Fine-grained dynamic FCOS head, depth D8, budget lambda 0.8.

COCO 2017, ResNet-50-FPN, 1x schedule: the release's settings (cvpods.configs.presets).
"""

from cvpods.configs import FCOSConfig
from cvpods.configs.presets import COCO_FCOS_R50_1X, RELEASE_GATES


class ExperimentConfig(FCOSConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(COCO_FCOS_R50_1X)
        self._register_configuration(RELEASE_GATES)
        self._register_configuration(
            dict(
                MODEL=dict(
                    FCOS=dict(HEAD_NAME="FCOSDynamicHead", NUM_CONVS=16, BUDGET_LOSS_LAMBDA=0.8)
                )
            )
        )


config = ExperimentConfig()
