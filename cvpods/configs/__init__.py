"""Configuration classes (cvpods style: nested dicts with attribute access)."""

from .base_config import BaseConfig, ConfigDict, ConfigError
from .base_detection_config import BaseDetectionConfig
from .configurable import configurable
from .fcos_config import FCOSConfig
from .rcnn_fpn_config import RCNNFPNConfig

__all__ = [
    "BaseConfig",
    "BaseDetectionConfig",
    "ConfigDict",
    "ConfigError",
    "FCOSConfig",
    "RCNNFPNConfig",
    "configurable",
]
