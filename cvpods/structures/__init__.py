"""Data structures shared by data loading, models and evaluation."""

from .boxes import Boxes, pairwise_iou
from .image_list import ImageList
from .instances import Instances

__all__ = ["Boxes", "ImageList", "Instances", "pairwise_iou"]
