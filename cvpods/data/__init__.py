"""Datasets, transforms, mappers and data loaders (cvpods style).

Typical use::

    from cvpods.data import build_train_loader, build_test_loader

    train_loader = build_train_loader(cfg)            # infinite; a batch is a list of dicts
    test_loader = build_test_loader(cfg, "shapes_val")
"""

from . import transforms
from .build import (
    build_test_loader,
    build_train_loader,
    get_detection_dataset_dicts,
    trivial_batch_collator,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .common import DatasetFromList, MapDataset
from .dataset_mapper import DatasetMapper
from .datasets import (
    DATASET_ROOT_ENV,
    ShapesSpec,
    generate_shapes,
    get_dataset_root,
    load_coco_json,
    register_coco_instances,
    register_shapes,
    register_shapes_from_config,
)
from .detection_utils import read_image
from .samplers import InferenceSampler, TrainingBatchSampler, TrainingSampler

__all__ = [
    "DATASET_ROOT_ENV",
    "DatasetCatalog",
    "DatasetFromList",
    "DatasetMapper",
    "InferenceSampler",
    "MapDataset",
    "Metadata",
    "MetadataCatalog",
    "ShapesSpec",
    "TrainingBatchSampler",
    "TrainingSampler",
    "build_test_loader",
    "build_train_loader",
    "generate_shapes",
    "get_dataset_root",
    "get_detection_dataset_dicts",
    "load_coco_json",
    "read_image",
    "register_coco_instances",
    "register_shapes",
    "register_shapes_from_config",
    "transforms",
    "trivial_batch_collator",
]
