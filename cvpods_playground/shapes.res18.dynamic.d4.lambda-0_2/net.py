"""Fine-grained dynamic FCOS head (D4, budget lambda 0.2): FCOS with ``FCOSDynamicHead``.

The library builds it: config.py names the detector (MODEL.META_ARCHITECTURE) and the head
(MODEL.FCOS.HEAD_NAME); a custom model would define its own ``build_model(cfg)`` here.
"""

from cvpods.modeling import build_model

__all__ = ["build_model"]
