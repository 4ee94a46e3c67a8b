"""Meta-architectures (whole detectors) and their heads, and the registries that name them."""

from .build import META_ARCH_REGISTRY, build_model
from .fcos import FCOS
from .fcos_heads import (
    FCOS_HEAD_REGISTRY,
    FCOSDynamicHead,
    FCOSFixHead,
    FCOSHead,
    FCOSHeadOutputs,
)
from .rcnn import GeneralizedRCNN

__all__ = [
    "FCOS",
    "FCOS_HEAD_REGISTRY",
    "META_ARCH_REGISTRY",
    "FCOSDynamicHead",
    "FCOSFixHead",
    "FCOSHead",
    "FCOSHeadOutputs",
    "GeneralizedRCNN",
    "build_model",
]
