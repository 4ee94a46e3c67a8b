"""Layers: conv/norm wrappers, masked convolution, and the dynamic head's building blocks."""

from .batch_norm import FrozenBatchNorm2d, freeze_batch_norms, get_norm
from .depth_cell import DynamicDepthCell, ResidualBranch, ResidualCell
from .head_stage import DynamicHeadStage, HeadStage

# Depend on the names above.
from .masked_conv import MaskedConv2d, MaskedEpilogue, masked_conv2d  # noqa: I001
from .scale_fusion import GatedDepthwiseUnit
from .shape_spec import ShapeSpec
from .spatial_gate import CostCollector, GateCost, SpatialGate, gate_activation, unit_cost
from .weight_init import init_head_layers
from .wrappers import Conv2d, Scale

# The stages' names in earlier versions (they are whole head stages, not only the fusion).
ScaleFusion = HeadStage
DynamicScaleFusion = DynamicHeadStage

__all__ = [
    "Conv2d",
    "CostCollector",
    "DynamicDepthCell",
    "DynamicHeadStage",
    "DynamicScaleFusion",
    "FrozenBatchNorm2d",
    "GateCost",
    "GatedDepthwiseUnit",
    "HeadStage",
    "MaskedConv2d",
    "MaskedEpilogue",
    "ResidualBranch",
    "ResidualCell",
    "Scale",
    "ScaleFusion",
    "ShapeSpec",
    "SpatialGate",
    "freeze_batch_norms",
    "gate_activation",
    "get_norm",
    "init_head_layers",
    "masked_conv2d",
    "unit_cost",
]
