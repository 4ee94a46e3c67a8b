"""Fine-grained dynamic FCOS head (depth D4, GeReTanH tau 1.5, budget lambda 0.1) on the embedded
shapes dataset: a thin ResNet-18-GN-FPN trained from scratch on a 2-core CPU in about ten minutes.

This is the experiment ``make quickstart`` trains (tools/quickstart.py).
"""

from cvpods.configs import FCOSConfig
from cvpods.configs.presets import RELEASE_GATES, SHAPES_R18_GN_FROM_SCRATCH


class ExperimentConfig(FCOSConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(SHAPES_R18_GN_FROM_SCRATCH)
        self._register_configuration(RELEASE_GATES)
        self._register_configuration(
            dict(MODEL=dict(FCOS=dict(NUM_CONVS=8, BUDGET_LOSS_LAMBDA=0.1)))
        )


config = ExperimentConfig()
