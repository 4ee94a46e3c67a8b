"""FCOS (head depth D2): FCOS with the ``FCOSHead`` head on a ResNet-FPN backbone."""

from cvpods.modeling import FCOS, FCOSHead


def build_model(cfg) -> FCOS:
    return FCOS(cfg, head_cls=FCOSHead)
