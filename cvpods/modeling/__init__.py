"""Models: backbones, meta-architectures, heads, losses."""

from .backbone import (
    build_resnet_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from .meta_arch import FCOS, FCOSDynamicHead, FCOSFixHead, FCOSHead, GeneralizedRCNN

__all__ = [
    "FCOS",
    "FCOSDynamicHead",
    "FCOSFixHead",
    "FCOSHead",
    "GeneralizedRCNN",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]
