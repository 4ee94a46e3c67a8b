"""Random augmentations named in ``INPUT.AUG.TRAIN_PIPELINES`` / ``TEST_PIPELINES``.

A pipeline is a list of ``(name, kwargs)``; each name is looked up in :data:`TRANSFORMS`::

    INPUT.AUG.TRAIN_PIPELINES = [
        ("ResizeShortestEdge", dict(short_edge_length=(640, 672, 704), max_size=1333,
                                    sample_style="choice")),
        ("RandomFlip", dict()),
    ]

An augmentation draws its random parameters from the ``numpy.random.Generator`` it is given and
returns a deterministic :class:`~cvpods.data.transforms.transform.Transform`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

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
    "ResizeShortestEdge",
    "Resize",
    "RandomFlip",
    "RandomBrightness",
    "RandomContrast",
    "RandomSaturation",
    "build_augmentations",
    "apply_augmentations",
]

#: name -> augmentation class; the names usable in the config pipelines.
TRANSFORMS: dict[str, type[Augmentation]] = {}

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


def register_transform(cls: type[Augmentation]) -> type[Augmentation]:
    """Class decorator: make ``cls`` usable by its class name in the config pipelines."""
    if cls.__name__ in TRANSFORMS:
        raise KeyError(f"a transform named {cls.__name__!r} is already registered")
    TRANSFORMS[cls.__name__] = cls
    return cls


class Augmentation:
    """Draws a :class:`Transform` for one image."""

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """The transform for ``image`` (``[H, W, C]`` uint8), its random choices drawn from
        ``rng`` (a :class:`NoOpTransform` when nothing changes)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def _interp(name: str) -> int:
    if name not in _INTERPOLATIONS:
        raise ValueError(f"interp must be one of {list(_INTERPOLATIONS)}, got {name!r}")
    return _INTERPOLATIONS[name]


def _factor_range(name: str, low: float, high: float) -> tuple[float, float]:
    if not 0 <= low <= high:
        raise ValueError(f"{name}: need 0 <= intensity_min <= intensity_max, got {low}, {high}")
    return float(low), float(high)


@register_transform
class ResizeShortestEdge(Augmentation):
    """Scale the shorter side to a sampled length, keeping the longer side <= ``max_size``.

    ``sample_style="choice"`` picks one of ``short_edge_length``; ``"range"`` draws an integer
    uniformly from ``[short_edge_length[0], short_edge_length[1]]``.
    """

    def __init__(
        self,
        short_edge_length: int | Sequence[int],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
        interp: str = "bilinear",
    ) -> None:
        lengths = (short_edge_length,) if isinstance(short_edge_length, int) else short_edge_length
        self.short_edge_length = tuple(int(v) for v in lengths)
        if sample_style not in ("choice", "range"):
            raise ValueError(
                "ResizeShortestEdge: sample_style must be 'choice' or 'range', "
                f"got {sample_style!r}"
            )
        if sample_style == "range" and len(self.short_edge_length) != 2:
            if len(self.short_edge_length) == 1:
                self.short_edge_length *= 2
            else:
                raise ValueError(
                    "ResizeShortestEdge: sample_style='range' needs short_edge_length=(min, max), "
                    f"got {short_edge_length!r}"
                )
        if not self.short_edge_length or min(self.short_edge_length) <= 0:
            raise ValueError(f"ResizeShortestEdge: bad short_edge_length {short_edge_length!r}")
        self.max_size = int(max_size)
        self.sample_style = sample_style
        self.interp = _interp(interp)

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        h, w = image.shape[:2]
        if self.sample_style == "choice":
            size = self.short_edge_length[int(rng.integers(len(self.short_edge_length)))]
        else:
            size = int(rng.integers(self.short_edge_length[0], self.short_edge_length[1] + 1))
        new_h, new_w = self.output_size(h, w, size, self.max_size)
        if (new_h, new_w) == (h, w):
            return NoOpTransform()
        return ResizeTransform(h, w, new_h, new_w, self.interp)

    @staticmethod
    def output_size(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
        """``(new_h, new_w)``: short side ``short_edge``, long side at most ``max_size``."""
        scale = short_edge / min(h, w)
        if max(h, w) * scale > max_size:
            scale = max_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)


@register_transform
class Resize(Augmentation):
    """Resize to a fixed ``shape=(height, width)``."""

    def __init__(self, shape: Sequence[int], interp: str = "bilinear") -> None:
        if len(shape) != 2 or min(shape) <= 0:
            raise ValueError(f"Resize: shape must be (height, width), got {shape!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.interp = _interp(interp)

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        h, w = image.shape[:2]
        return ResizeTransform(h, w, self.shape[0], self.shape[1], self.interp)


@register_transform
class RandomFlip(Augmentation):
    """Flip left-right (``horizontal``) or top-bottom (``vertical``) with probability ``prob``."""

    def __init__(self, prob: float = 0.5, horizontal: bool = True, vertical: bool = False) -> None:
        if horizontal == vertical:
            raise ValueError("RandomFlip: set exactly one of horizontal=True or vertical=True")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomFlip: prob must be in [0, 1], got {prob}")
        self.prob, self.horizontal, self.vertical = float(prob), horizontal, vertical

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        if rng.random() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class _RandomFactor(Augmentation):
    transform_class: Callable[[float], Transform]

    def __init__(self, intensity_min: float = 0.8, intensity_max: float = 1.2) -> None:
        self.intensity_min, self.intensity_max = _factor_range(
            type(self).__name__, intensity_min, intensity_max
        )

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        return self.transform_class(float(rng.uniform(self.intensity_min, self.intensity_max)))


@register_transform
class RandomBrightness(_RandomFactor):
    """Scale pixel values by a factor drawn from ``[intensity_min, intensity_max]``."""

    transform_class = BrightnessTransform


@register_transform
class RandomContrast(_RandomFactor):
    """Scale deviations from the image mean by a factor in ``[intensity_min, intensity_max]``."""

    transform_class = ContrastTransform


@register_transform
class RandomSaturation(_RandomFactor):
    """Scale each pixel's deviation from grey by a factor in ``[intensity_min, intensity_max]``."""

    transform_class = SaturationTransform


def build_augmentations(pipelines: Sequence[Sequence[Any]]) -> list[Augmentation]:
    """Augmentations from a config pipeline: a list of ``(name, kwargs)`` pairs."""
    augmentations = []
    for i, item in enumerate(pipelines):
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[1], dict):
            raise ValueError(f"pipeline entry {i} must be a (name, kwargs dict) pair, got {item!r}")
        name, kwargs = item
        if name not in TRANSFORMS:
            raise KeyError(
                f"unknown transform {name!r} in pipeline entry {i}; "
                f"valid names: {sorted(TRANSFORMS)}"
            )
        cls = TRANSFORMS[name]
        try:
            inspect.signature(cls).bind(**kwargs)
        except TypeError as exc:
            raise TypeError(
                f"transform {name!r}: bad arguments {kwargs!r} ({exc}); "
                f"its signature is {name}{inspect.signature(cls)}"
            ) from None
        augmentations.append(cls(**kwargs))
    return augmentations


def apply_augmentations(
    augmentations: Sequence[Augmentation], image: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, TransformList]:
    """Apply the augmentations in turn (each sees the previous output) -> image, transform."""
    transforms = []
    for aug in augmentations:
        transform = aug.get_transform(image, rng)
        image = transform.apply_image(image)
        transforms.append(transform)
    return image, TransformList(transforms)
