"""Fixed deep FCOS head, depth D4: FCOS with the ``FCOSFixHead`` head on a ResNet-FPN backbone."""

from cvpods.modeling import FCOS, FCOSFixHead


def build_model(cfg) -> FCOS:
    return FCOS(cfg, head_cls=FCOSFixHead)
