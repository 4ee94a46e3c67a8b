"""Meta-architectures (whole detectors) and their heads."""

from .fcos import FCOS
from .fcos_heads import FCOSDynamicHead, FCOSFixHead, FCOSHead, FCOSHeadOutputs
from .rcnn import GeneralizedRCNN

__all__ = [
    "FCOS",
    "FCOSDynamicHead",
    "FCOSFixHead",
    "FCOSHead",
    "FCOSHeadOutputs",
    "GeneralizedRCNN",
]
