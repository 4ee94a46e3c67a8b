"""Data structures shared by data loading, models and evaluation (cvpods/detectron2 names)."""

from .boxes import (
    Boxes,
    BoxMode,
    StructureError,
    matched_boxlist_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
)
from .image_list import ImageList
from .instances import Instances

__all__ = [
    "BoxMode",
    "Boxes",
    "ImageList",
    "Instances",
    "StructureError",
    "matched_boxlist_iou",
    "pairwise_intersection",
    "pairwise_ioa",
    "pairwise_iou",
]
