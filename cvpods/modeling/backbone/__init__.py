"""Backbones: ResNet and FPN."""

from .backbone import Backbone
from .fpn import FPN, LastLevelP6P7, build_retinanet_resnet_fpn_backbone
from .resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet, build_resnet_backbone

__all__ = [
    "FPN",
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "LastLevelP6P7",
    "ResNet",
    "build_resnet_backbone",
    "build_retinanet_resnet_fpn_backbone",
]
