"""Static description of a feature map (channels and stride)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """A feature map's channel count, stride (pixels of input per feature cell) and optional size."""

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    stride: int | None = None
