"""Deterministic transforms of an image and of the boxes/points on it.

Images are ``[H, W, C]`` uint8 numpy arrays; points are ``[N, 2]`` float ``(x, y)`` arrays in
pixels; boxes are ``[N, 4]`` float XYXY arrays in pixels. A :class:`Transform` is made with all its
parameters fixed (random choices are made by the augmentations in
:mod:`cvpods.data.transforms.augmentation`), so the same transform can be applied to the image and
to its annotations.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

__all__ = [
    "Transform",
    "TransformList",
    "NoOpTransform",
    "ResizeTransform",
    "HFlipTransform",
    "VFlipTransform",
    "BrightnessTransform",
    "ContrastTransform",
    "SaturationTransform",
]


class Transform:
    """Base class: geometry-free by default (points and boxes are returned unchanged)."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, C]`` (or ``[H, W]``) uint8 image -> the transformed image, uint8."""
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """``[N, 2]`` ``(x, y)`` points -> transformed points."""
        return coords

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` XYXY boxes -> the axis-aligned boxes enclosing their transformed corners."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
        corners = self.apply_coords(corners).reshape(-1, 4, 2)
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class TransformList(Transform):
    """Several transforms applied in order."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = [t for t in transforms if not isinstance(t, NoOpTransform)]

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """The image through every transform, in order."""
        for t in self.transforms:
            image = t.apply_image(image)
        return image

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """``[N, 2]`` points through every transform, in order."""
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` XYXY boxes through every transform's :meth:`apply_box`, in order."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for t in self.transforms:
            boxes = t.apply_box(boxes)
        return boxes

    def __len__(self) -> int:
        return len(self.transforms)


class NoOpTransform(Transform):
    """Leaves the image and its annotations as they are."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return image


class ResizeTransform(Transform):
    """Resize an ``h x w`` image to ``new_h x new_w`` (OpenCV interpolation flag ``interp``)."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int = cv2.INTER_LINEAR):
        self.h, self.w, self.new_h, self.new_w, self.interp = h, w, new_h, new_w, interp

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform was made for a {self.h}x{self.w} image, got {image.shape[:2]}"
            )
        resized = cv2.resize(image, (self.new_w, self.new_h), interpolation=self.interp)
        return resized.reshape(self.new_h, self.new_w, *image.shape[2:])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords


class HFlipTransform(Transform):
    """Mirror an image of the given ``width`` left-right."""

    def __init__(self, width: int) -> None:
        self.width = width

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, ::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] = self.width - coords[:, 0]
        return coords


class VFlipTransform(Transform):
    """Mirror an image of the given ``height`` top-bottom."""

    def __init__(self, height: int) -> None:
        self.height = height

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 1] = self.height - coords[:, 1]
        return coords


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class BrightnessTransform(Transform):
    """Multiply all pixel values by ``factor``."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return _to_uint8(image.astype(np.float32) * np.float32(self.factor))


class ContrastTransform(Transform):
    """Move pixel values away from (``factor`` > 1) or towards (< 1) the image mean."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float32)
        mean = np.float32(image.mean())
        return _to_uint8(mean + (image - mean) * np.float32(self.factor))


class SaturationTransform(Transform):
    """Move each pixel away from (``factor`` > 1) or towards (< 1) its channel mean (grey)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3:
            return image
        image = image.astype(np.float32)
        gray = image.mean(axis=2, keepdims=True)
        return _to_uint8(gray + (image - gray) * np.float32(self.factor))
