"""Fixed deep FCOS head (D4): FCOS with ``FCOSFixHead`` (the dynamic head's layout, no gates)."""

from cvpods.modeling import FCOS, FCOSFixHead


def build_model(cfg) -> FCOS:
    return FCOS(cfg, head_cls=FCOSFixHead)
