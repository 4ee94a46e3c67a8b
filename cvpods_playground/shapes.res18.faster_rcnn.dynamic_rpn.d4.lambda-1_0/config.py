"""Faster R-CNN with the fine-grained dynamic RPN head (D4, GeReTanH tau 1.5, budget lambda 1.0)
on the embedded shapes dataset (thin ResNet-18-GN-FPN from scratch, 2-core CPU). The gates learn
with the shapes settings (SHAPES_RPN_GATE_LEARNING; see the presets).

The strongest budget of the shapes RPN rows (lambda 0.1, 0.5, 1.0): with lambda 0.5 the gates
switch two of the four depth cells off everywhere, 51 % of the head computed; see the README's
Faster R-CNN results."""

from cvpods.configs import RCNNFPNConfig
from cvpods.configs.presets import (
    RPN_RELEASE_GATES,
    SHAPES_R18_GN_FASTER_RCNN,
    SHAPES_RPN_GATE_LEARNING,
)


class ExperimentConfig(RCNNFPNConfig):
    def __init__(self) -> None:
        super().__init__()
        self._register_configuration(SHAPES_R18_GN_FASTER_RCNN)
        self._register_configuration(RPN_RELEASE_GATES)
        self._register_configuration(
            dict(
                MODEL=dict(
                    RPN=dict(HEAD_NAME="DynamicRPNHead", NUM_CONVS=8, BUDGET_LOSS_LAMBDA=1.0)
                )
            )
        )
        self._register_configuration(SHAPES_RPN_GATE_LEARNING)


config = ExperimentConfig()
