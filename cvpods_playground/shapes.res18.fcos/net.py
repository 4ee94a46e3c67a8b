"""FCOS baseline: FCOS with the standard ``FCOSHead`` on a ResNet-FPN backbone."""

from cvpods.modeling import FCOS, FCOSHead


def build_model(cfg) -> FCOS:
    return FCOS(cfg, head_cls=FCOSHead)
