"""Fine-grained dynamic FCOS head (D4, budget lambda 0): FCOS with ``FCOSDynamicHead``."""

from cvpods.modeling import FCOS, FCOSDynamicHead


def build_model(cfg) -> FCOS:
    return FCOS(cfg, head_cls=FCOSDynamicHead)
