"""The library's model builder: the meta-architecture named by MODEL.META_ARCHITECTURE.

An experiment's ``net.py`` usually re-exports :func:`build_model`; the config then says which
detector (MODEL.META_ARCHITECTURE: ``"FCOS"`` in FCOSConfig, ``"GeneralizedRCNN"`` in
RCNNFPNConfig) and which head (MODEL.FCOS.HEAD_NAME, MODEL.RPN.HEAD_NAME) to build.
"""

from __future__ import annotations

from torch import nn

from ...configs import ConfigError
from ...utils.registry import Registry

#: Whole detectors by name; ``MODEL.META_ARCHITECTURE`` picks the one :func:`build_model` builds.
META_ARCH_REGISTRY = Registry("meta-architecture", "MODEL.META_ARCHITECTURE")


def build_model(cfg) -> nn.Module:
    """The detector named by MODEL.META_ARCHITECTURE, built from ``cfg`` (``Cls(cfg)``).

    The model stays on the CPU, in training mode: the caller moves it (``model.to(device)``).

    Raises:
        ConfigError: MODEL.META_ARCHITECTURE is missing, or names no registered class.
    """
    name = cfg.MODEL.get("META_ARCHITECTURE")
    if name is None:
        raise ConfigError(
            "the config has no MODEL.META_ARCHITECTURE: derive it from FCOSConfig or "
            f"RCNNFPNConfig, or set it to one of {', '.join(META_ARCH_REGISTRY.names())}"
        )
    return META_ARCH_REGISTRY.get(name)(cfg)
