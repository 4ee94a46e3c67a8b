"""Dataset loaders: COCO json files, the built-in COCO splits and the generated shapes dataset."""

from .builtin import COCO_SPLITS, SHAPES_DEFAULTS, register_shapes, register_shapes_from_config
from .coco import contiguous_id_map, load_coco_api, load_coco_json, register_coco_instances
from .paths import DATASET_ROOT_ENV, get_dataset_root
from .shapes import SHAPE_CLASSES, ShapesFiles, ShapesSpec, generate_shapes, shapes_split_dir

__all__ = [
    "COCO_SPLITS",
    "DATASET_ROOT_ENV",
    "SHAPES_DEFAULTS",
    "SHAPE_CLASSES",
    "ShapesFiles",
    "ShapesSpec",
    "contiguous_id_map",
    "generate_shapes",
    "get_dataset_root",
    "load_coco_api",
    "load_coco_json",
    "register_coco_instances",
    "register_shapes",
    "register_shapes_from_config",
    "shapes_split_dir",
]
