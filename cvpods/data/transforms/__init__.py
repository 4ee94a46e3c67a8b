"""Image transforms (deterministic) and the augmentations that draw them (random)."""

from .augmentation import (
    TRANSFORMS,
    Augmentation,
    RandomBrightness,
    RandomContrast,
    RandomFlip,
    RandomSaturation,
    Resize,
    ResizeShortestEdge,
    apply_augmentations,
    build_augmentations,
    register_transform,
)
from .transform import (
    BrightnessTransform,
    ContrastTransform,
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    SaturationTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

__all__ = [
    "TRANSFORMS",
    "Augmentation",
    "BrightnessTransform",
    "ContrastTransform",
    "HFlipTransform",
    "NoOpTransform",
    "RandomBrightness",
    "RandomContrast",
    "RandomFlip",
    "RandomSaturation",
    "Resize",
    "ResizeShortestEdge",
    "ResizeTransform",
    "SaturationTransform",
    "Transform",
    "TransformList",
    "VFlipTransform",
    "apply_augmentations",
    "build_augmentations",
    "register_transform",
]
