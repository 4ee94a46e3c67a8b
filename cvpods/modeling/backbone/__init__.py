"""Backbones: ResNet and FPN."""

from .backbone import Backbone
from .fpn import (
    FPN,
    LastLevelMaxPool,
    LastLevelP6P7,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from .resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet, build_resnet_backbone

__all__ = [
    "FPN",
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "ResNet",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]
