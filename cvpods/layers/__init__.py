"""Layers: conv/norm wrappers, masked convolution, and the dynamic head's building blocks."""

from .batch_norm import FrozenBatchNorm2d, freeze_batch_norms, get_norm
from .depth_cell import DynamicDepthCell, ResidualBranch, ResidualCell, init_head_layers

# Depend on the names above.
from .masked_conv import MaskedConv2d, MaskedEpilogue, masked_conv2d  # noqa: I001
from .scale_fusion import DynamicScaleFusion, GatedDepthwiseUnit, ScaleFusion
from .shape_spec import ShapeSpec
from .spatial_gate import CostCollector, GateCost, SpatialGate, gate_activation, unit_cost
from .wrappers import Conv2d, Scale

__all__ = [
    "Conv2d",
    "CostCollector",
    "DynamicDepthCell",
    "DynamicScaleFusion",
    "FrozenBatchNorm2d",
    "GateCost",
    "GatedDepthwiseUnit",
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
