"""Faster R-CNN: ``GeneralizedRCNN`` (ResNet-FPN p2-p6, RPN with the head MODEL.RPN.HEAD_NAME,
StandardROIHeads with the 2fc box head).

The library builds it: config.py names the detector (MODEL.META_ARCHITECTURE) and the head
(MODEL.RPN.HEAD_NAME); a custom model would define its own ``build_model(cfg)`` here.
"""

from cvpods.modeling import build_model

__all__ = ["build_model"]
