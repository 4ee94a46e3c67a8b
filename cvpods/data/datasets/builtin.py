"""Built-in datasets: COCO under the dataset root, and the generated ``shapes_train/val``.

The dataset root is ``$CVPODS_DATASETS`` if set, else the source checkout's ``datasets/`` (or
``./datasets`` outside a checkout; see :mod:`.paths`); it is resolved each time a dataset is
loaded, not at import time.
"""

from __future__ import annotations

import os
from typing import Any

from ...configs.base_detection_config import SHAPES_DEFAULTS
from ..catalog import DatasetCatalog, MetadataCatalog
from .coco import contiguous_id_map, load_coco_json
from .paths import DATASET_ROOT_ENV, default_dataset_root, get_dataset_root
from .shapes import SHAPE_CATEGORY_IDS, SHAPE_CLASSES, ShapesSpec, generate_shapes

__all__ = [
    "DATASET_ROOT_ENV",
    "COCO_SPLITS",
    "SHAPES_DEFAULTS",
    "get_dataset_root",
    "register_shapes",
    "register_shapes_from_config",
]

#: name -> (image folder, annotation file), relative to the dataset root.
COCO_SPLITS: dict[str, tuple[str, str]] = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2014_valminusminival": (
        "coco/val2014",
        "coco/annotations/instances_valminusminival2014.json",
    ),
}


def _root_description(root: str) -> str:
    env = os.environ.get(DATASET_ROOT_ENV)
    source = (
        f"${DATASET_ROOT_ENV}={env}"
        if env
        else f"${DATASET_ROOT_ENV} is not set, so the default {default_dataset_root()}"
    )
    return f"the dataset root is {root} ({source}; see datasets/README.md)"


def _set_paths(name: str, json_file: str, image_root: str) -> None:
    """Record where dataset ``name`` was loaded from (the root may change between loads)."""
    values = MetadataCatalog.get(name).as_dict()
    if values.get("json_file", json_file) != json_file:
        MetadataCatalog.remove(name)
    values.update(json_file=json_file, image_root=image_root)
    MetadataCatalog.get(name).set(**values)


def _load_coco_builtin(name: str) -> list[dict]:
    root = get_dataset_root()
    image_dir, json_rel = COCO_SPLITS[name]
    json_file, image_root = os.path.join(root, json_rel), os.path.join(root, image_dir)
    for kind, path, is_file in (
        ("annotation file", json_file, True),
        ("image folder", image_root, False),
    ):
        if not (os.path.isfile(path) if is_file else os.path.isdir(path)):
            raise FileNotFoundError(
                f"dataset {name!r} expects its {kind} at {path}, which does not exist; "
                f"{_root_description(root)}. Set ${DATASET_ROOT_ENV} to the folder that holds "
                f"'coco/' or link COCO there."
            )
    _set_paths(name, json_file, image_root)
    return load_coco_json(json_file, image_root, name)


def _register_coco_builtins() -> None:
    for name in COCO_SPLITS:
        DatasetCatalog.register(name, lambda name=name: _load_coco_builtin(name))
        MetadataCatalog.get(name).set(evaluator_type="coco")


def _shapes_loader(name: str, spec: ShapesSpec, root: str | None):
    def load() -> list[dict]:
        files = generate_shapes(spec, get_dataset_root(root))
        _set_paths(name, files.json_file, files.image_root)
        return load_coco_json(files.json_file, files.image_root, name)

    return load


def register_shapes(
    root: str | os.PathLike | None = None,
    num_train: int = SHAPES_DEFAULTS["NUM_TRAIN"],
    num_val: int = SHAPES_DEFAULTS["NUM_VAL"],
    min_size: int = SHAPES_DEFAULTS["MIN_SIZE"],
    max_size: int = SHAPES_DEFAULTS["MAX_SIZE"],
    seed: int = SHAPES_DEFAULTS["SEED"],
    names: tuple[str, str] = ("shapes_train", "shapes_val"),
) -> None:
    """(Re-)register the shapes splits as ``names``; the images are generated on first load.

    ``root`` defaults to the dataset root at load time. Registering the same parameters again is a
    no-op; different parameters replace the previous registration (and its metadata).
    """
    root = None if root is None else os.fspath(root)
    for name, split, num in ((names[0], "train", num_train), (names[1], "val", num_val)):
        spec = ShapesSpec(split, int(num), int(min_size), int(max_size), int(seed))
        key = (spec, root)
        if name in DatasetCatalog and MetadataCatalog.get(name).get("shapes_key") == key:
            continue
        DatasetCatalog.register(name, _shapes_loader(name, spec, root), overwrite=True)
        MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(
            thing_classes=list(SHAPE_CLASSES),
            thing_dataset_id_to_contiguous_id=contiguous_id_map(SHAPE_CATEGORY_IDS),
            evaluator_type="coco",
            shapes_key=key,
        )


def register_shapes_from_config(cfg: Any) -> None:
    """Register the shapes splits with the parameters in ``cfg.DATASETS.SHAPES`` (if present)."""
    params = dict(SHAPES_DEFAULTS)
    params.update(cfg.get("DATASETS", {}).get("SHAPES", {}) or {})
    unknown = set(params) - set(SHAPES_DEFAULTS)
    if unknown:
        raise KeyError(
            f"unknown config keys under DATASETS.SHAPES: {sorted(unknown)}; "
            f"expected {list(SHAPES_DEFAULTS)}"
        )
    register_shapes(
        num_train=params["NUM_TRAIN"],
        num_val=params["NUM_VAL"],
        min_size=params["MIN_SIZE"],
        max_size=params["MAX_SIZE"],
        seed=params["SEED"],
    )


_register_coco_builtins()
register_shapes()
