"""Fine-grained dynamic FCOS head
(depth D8, budget lambda 0.1): FCOS with the ``FCOSDynamicHead`` head on a ResNet-FPN backbone."""

from cvpods.modeling import FCOS, FCOSDynamicHead


def build_model(cfg) -> FCOS:
    return FCOS(cfg, head_cls=FCOSDynamicHead)
