"""Fine-grained dynamic FCOS head (depth D4, GeReTanH tau 1.5, budget lambda 0.2) on the embedded
shapes dataset: a thin ResNet-18-GN-FPN trained from scratch on a 2-core CPU.

Between lambda 0.1 and 0.8: with AdamW the lambda 0.1 gates still compute 56 % of the head.

The gates learn with the shapes settings (SHAPES_GATE_LEARNING: gate convs at 10x the learning
rate, the budget loss ramped in over 150 iterations); see the presets for why.
"""

from cvpods.configs import FCOSConfig
from cvpods.configs.presets import (
    RELEASE_GATES,
    SHAPES_GATE_LEARNING,
    SHAPES_R18_GN_FROM_SCRATCH,
)


class ExperimentConfig(FCOSConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(SHAPES_R18_GN_FROM_SCRATCH)
        self._register_configuration(RELEASE_GATES)
        self._register_configuration(
            dict(
                MODEL=dict(
                    FCOS=dict(HEAD_NAME="FCOSDynamicHead", NUM_CONVS=8, BUDGET_LOSS_LAMBDA=0.2)
                )
            )
        )
        self._register_configuration(SHAPES_GATE_LEARNING)


config = ExperimentConfig()
