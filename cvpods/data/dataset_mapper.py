"""Turns a dataset dict into the model's input dict (reads the image, augments, builds targets)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from . import detection_utils as utils
from .transforms import apply_augmentations, build_augmentations

__all__ = ["DatasetMapper"]


class DatasetMapper:
    """Callable ``mapper(dataset_dict, rng=None) -> dict`` producing the model input.

    The output holds:

    - ``"image"``: ``[C, H, W]`` uint8 tensor in ``INPUT.FORMAT`` after augmentation,
    - ``"instances"`` (training only): ``Instances`` with ``gt_boxes`` (``Boxes``, XYXY pixels of
      the augmented image) and ``gt_classes`` (int64 contiguous class ids); crowd boxes are not
      used,
    - ``"height"``, ``"width"``: the *original* image size, at which the model returns predictions,
    - ``"file_name"``, ``"image_id"``.

    ``rng`` draws the random augmentation parameters; the data loader passes one seeded from the
    sample's position in the stream, which makes training data reproducible.
    """

    def __init__(self, cfg: Any, is_train: bool = True) -> None:
        pipelines = cfg.INPUT.AUG.TRAIN_PIPELINES if is_train else cfg.INPUT.AUG.TEST_PIPELINES
        self.augmentations = build_augmentations(pipelines)
        self.image_format = cfg.INPUT.FORMAT
        if self.image_format not in utils.SUPPORTED_FORMATS:
            raise ValueError(
                f"INPUT.FORMAT must be one of {utils.SUPPORTED_FORMATS}, got {self.image_format!r}"
            )
        self.is_train = is_train

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict:
        rng = rng if rng is not None else np.random.default_rng()
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        height, width = image.shape[:2]
        image, transform = apply_augmentations(self.augmentations, image, rng)

        annotations = dataset_dict.pop("annotations", None)
        out = {
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict.get("image_id"),
            "height": int(dataset_dict.get("height", height)),
            "width": int(dataset_dict.get("width", width)),
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
        }
        if self.is_train:
            boxes, classes = utils.transform_annotations(annotations or [], transform)
            out["instances"] = utils.annotations_to_instances(boxes, classes, image.shape[:2])
        return out

    def __repr__(self) -> str:
        return (
            f"DatasetMapper(is_train={self.is_train}, format={self.image_format!r}, "
            f"augmentations={self.augmentations})"
        )
