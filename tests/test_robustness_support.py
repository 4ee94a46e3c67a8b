"""Helpers for the issue-13 robustness tests (no tests here): tiny COCO data, a tiny FCOS
experiment, and loading ``demo/demo.py`` as a module."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 4, "name": "box"}, {"id": 9, "name": "disc"}]


def write_coco(
    root: Path,
    num_images: int = 4,
    size: tuple[int, int] = (48, 64),
    name: str = "train.json",
    extension: str = ".png",
) -> Path:
    """``num_images`` images with one box each under ``root/images`` and their COCO json."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    height, width = size
    images, annotations = [], []
    for index in range(num_images):
        image = np.full((height, width, 3), 30 + 20 * index, np.uint8)
        cv2.rectangle(image, (5, 5), (25, 25), (0, 200, 255), thickness=-1)
        file_name = f"img_{index}{extension}"
        cv2.imwrite(str(root / "images" / file_name), image)
        image_id = 100 + index
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        annotations.append(
            {
                "id": index + 1,
                "image_id": image_id,
                "category_id": 4 if index % 2 == 0 else 9,
                "bbox": [5, 5, 21, 21],
                "area": 441,
                "iscrowd": 0,
            }
        )
    path = root / name
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return path


TINY_FCOS_CONFIG = """
from cvpods.configs import FCOSConfig


class TinyConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        size = dict(short_edge_length=(128,), max_size=192, sample_style="choice")
        self._register_configuration(
            dict(
                MODEL=dict(
                    DEVICE="cpu",
                    BACKBONE=dict(FREEZE_AT=0),
                    RESNETS=dict(
                        DEPTH=18, NORM="GN", WIDTH_PER_GROUP=32, RES2_OUT_CHANNELS=32,
                        STEM_OUT_CHANNELS=32,
                    ),
                    FPN=dict(OUT_CHANNELS=32),
                    FCOS=dict(NUM_CLASSES=2, NUM_CONVS=2),
                ),
                DATASETS=dict(TRAIN=({train!r},), TEST=({test!r},)),
                INPUT=dict(
                    AUG=dict(
                        TRAIN_PIPELINES=[("ResizeShortestEdge", size)],
                        TEST_PIPELINES=[("ResizeShortestEdge", size)],
                    )
                ),
                DATALOADER=dict(NUM_WORKERS=0, ASPECT_RATIO_GROUPING=False),
                SOLVER=dict(
                    IMS_PER_BATCH=2, BASE_LR=0.001, MAX_ITER=4, STEPS=(3,), WARMUP_ITERS=1,
                    CHECKPOINT_PERIOD=4,
                ),
                SEED=3,
            )
        )


{register}
config = TinyConfig()
"""

TINY_FCOS_NET = """
from cvpods.modeling import FCOS, FCOSHead


def build_model(cfg):
    return FCOS(cfg, head_cls=FCOSHead)
"""


def write_tiny_fcos_experiment(
    folder: Path,
    train: str = "shapes_train",
    test: str = "shapes_val",
    register: str = "",
) -> Path:
    """A tiny FCOS experiment (ResNet-18-GN, 32 channels, 128 px inputs) in ``folder``.

    ``register`` is Python code run in config.py before the config is made (dataset
    registration).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.py").write_text(
        textwrap.dedent(TINY_FCOS_CONFIG).format(train=train, test=test, register=register)
    )
    (folder / "net.py").write_text(textwrap.dedent(TINY_FCOS_NET))
    return folder


def load_demo() -> ModuleType:
    """``demo/demo.py`` as a module (it imports its neighbour ``predictor``)."""
    if "cvpods_demo_under_test" in sys.modules:
        return sys.modules["cvpods_demo_under_test"]
    spec = importlib.util.spec_from_file_location(
        "cvpods_demo_under_test", REPO / "demo" / "demo.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["cvpods_demo_under_test"] = module
    spec.loader.exec_module(module)
    return module
