"""Helpers shared by the dataset mapper: reading images, turning annotations into Instances."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import torch

from ..structures import Boxes, BoxMode, Instances
from .transforms import Transform

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_FORMATS",
    "read_image",
    "check_image_size",
    "transform_annotations",
    "annotations_to_instances",
    "filter_empty_annotations",
]

SUPPORTED_FORMATS = ("BGR", "RGB")


def read_image(file_name: str, format: str = "BGR") -> np.ndarray:
    """``[H, W, 3]`` uint8 image in ``format`` ("BGR" or "RGB"), read with OpenCV.

    Raises FileNotFoundError for a missing file and OSError for one OpenCV cannot decode, both
    naming the file.
    """
    if format not in SUPPORTED_FORMATS:
        raise ValueError(f"INPUT.FORMAT must be one of {SUPPORTED_FORMATS}, got {format!r}")
    if not os.path.isfile(file_name):
        raise FileNotFoundError(f"image file {file_name} does not exist")
    data = np.fromfile(file_name, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise OSError(f"cannot decode image file {file_name} (corrupt or not an image)")
    if format == "RGB":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def check_image_size(dataset_dict: dict, image: np.ndarray) -> None:
    """Raise if the image read from disk differs in size from its annotation's height/width."""
    expected = (dataset_dict.get("height"), dataset_dict.get("width"))
    actual = image.shape[:2]
    if None not in expected and tuple(expected) != tuple(actual):
        raise ValueError(
            f"image file {dataset_dict['file_name']} is {actual[0]}x{actual[1]} (HxW) but its "
            f"annotations say {expected[0]}x{expected[1]}"
        )


def transform_annotations(
    annotations: list[dict], transform: Transform
) -> tuple[np.ndarray, np.ndarray]:
    """Non-crowd annotations -> ``(boxes [N, 4] float32 XYXY, transformed; classes [N] int64)``.

    Each annotation's ``bbox`` is read in its ``bbox_mode`` (a :class:`BoxMode`, default XYXY_ABS).
    """
    kept = [a for a in annotations if not a.get("iscrowd", 0)]
    # "bbox_mode" as in cvpods/detectron2 dataset dicts (XYWH_ABS from COCO json); absent: XYXY_ABS.
    boxes = np.array(
        [
            BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
            for a in kept
        ],
        dtype=np.float64,
    ).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in kept], dtype=np.int64)
    if len(kept):
        boxes = transform.apply_box(boxes)
    return boxes.astype(np.float32), classes


def annotations_to_instances(
    boxes: np.ndarray, classes: np.ndarray, image_size: tuple[int, int]
) -> Instances:
    """``Instances(gt_boxes, gt_classes)`` for an image of ``(height, width)``.

    Boxes are clipped to the image and boxes left without width or height are removed.
    """
    gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    gt_boxes.clip(image_size)
    keep = gt_boxes.nonempty()
    return Instances(
        image_size,
        gt_boxes=gt_boxes[keep],
        gt_classes=torch.as_tensor(classes, dtype=torch.int64)[keep],
    )


def filter_empty_annotations(dataset_dicts: list[dict], dataset_name: str = "") -> list[dict]:
    """Drop images that have no non-crowd annotation (logging how many)."""
    kept = [
        d for d in dataset_dicts if any(not a.get("iscrowd", 0) for a in d.get("annotations", []))
    ]
    removed = len(dataset_dicts) - len(kept)
    if removed:
        logger.info(
            "Removed %d images without (non-crowd) annotations from %s; %d images left",
            removed,
            dataset_name or "the training set",
            len(kept),
        )
    return kept
