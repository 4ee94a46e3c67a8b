"""Fixed deep FCOS head (depth D4: every scale-fusion and depth cell always computed) on the
embedded shapes dataset: a thin ResNet-18-GN-FPN trained from scratch on a 2-core CPU, same
schedule as the dynamic experiment."""

from cvpods.configs import FCOSConfig
from cvpods.configs.presets import SHAPES_R18_GN_FROM_SCRATCH


class ExperimentConfig(FCOSConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(SHAPES_R18_GN_FROM_SCRATCH)
        self._register_configuration(
            dict(MODEL=dict(FCOS=dict(HEAD_NAME="FCOSFixHead", NUM_CONVS=8)))
        )


config = ExperimentConfig()
