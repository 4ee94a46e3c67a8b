"""Faster R-CNN: ``GeneralizedRCNN`` (ResNet-FPN p2-p6, RPN with the head MODEL.RPN.HEAD_NAME,
StandardROIHeads with the 2fc box head)."""

from cvpods.modeling import GeneralizedRCNN


def build_model(cfg) -> GeneralizedRCNN:
    return GeneralizedRCNN(cfg)
