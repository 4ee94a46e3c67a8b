"""Models: backbones, meta-architectures, heads, losses.

:func:`build_model` builds the detector a config names (MODEL.META_ARCHITECTURE, with its head
from MODEL.FCOS.HEAD_NAME or MODEL.RPN.HEAD_NAME); the registries below hold those names.
"""

from .backbone import (
    build_resnet_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from .meta_arch import (
    FCOS,
    FCOS_HEAD_REGISTRY,
    META_ARCH_REGISTRY,
    FCOSDynamicHead,
    FCOSFixHead,
    FCOSHead,
    GeneralizedRCNN,
    build_model,
)
from .proposal_generator import RPN_HEAD_REGISTRY

__all__ = [
    "FCOS",
    "FCOS_HEAD_REGISTRY",
    "META_ARCH_REGISTRY",
    "RPN_HEAD_REGISTRY",
    "FCOSDynamicHead",
    "FCOSFixHead",
    "FCOSHead",
    "GeneralizedRCNN",
    "build_model",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]
