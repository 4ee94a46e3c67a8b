"""Your own COCO-format data, registered as datasets/README.md says, through both launchers.

The experiment's ``config.py`` calls ``register_coco_instances`` at import time. The launchers
import an experiment more than once per process, so registration has to be idempotent; this test
runs the real console scripts (``cvpods_train`` then ``cvpods_test``) in a fresh process each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvpods.data import DatasetCatalog, MetadataCatalog, register_coco_instances

# Category ids that are neither contiguous nor start at 0 (contiguous ids are made at load).
CATEGORIES = [{"id": 4, "name": "box"}, {"id": 9, "name": "disc"}]


def write_tiny_coco(root: Path, num_images: int = 4, size: tuple[int, int] = (160, 224)) -> Path:
    """Draw ``num_images`` images with one filled square and one disc each; write their json."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    height, width = size
    images, annotations = [], []
    for index in range(num_images):
        image = np.full((height, width, 3), 40, np.uint8)
        x, y, side = int(rng.integers(4, 40)), int(rng.integers(4, 40)), int(rng.integers(20, 40))
        cv2.rectangle(image, (x, y), (x + side, y + side), (0, 200, 255), thickness=-1)
        cx, cy, radius = int(rng.integers(80, 108)), int(rng.integers(30, 70)), 14
        cv2.circle(image, (cx, cy), radius, (255, 80, 0), thickness=-1)
        name = f"img_{index}.png"
        cv2.imwrite(str(root / "images" / name), image)
        image_id = 100 + index
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for category, box in ((4, [x, y, side + 1, side + 1]), (9, [cx - 14, cy - 14, 29, 29])):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    path = root / "train.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return path


CONFIG = """
from cvpods.configs import FCOSConfig
from cvpods.data import register_coco_instances

# As datasets/README.md says: register in config.py, then name the datasets in the config.
register_coco_instances("my_train", {json!r}, {images!r})
register_coco_instances("my_val", {json!r}, {images!r})


class MyDataConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        size = dict(short_edge_length=(160,), max_size=224, sample_style="choice")
        self._register_configuration(
            dict(
                MODEL=dict(
                    DEVICE="cpu",
                    PIXEL_STD=[57.375, 57.120, 58.395],
                    BACKBONE=dict(FREEZE_AT=0),
                    RESNETS=dict(
                        DEPTH=18,
                        NORM="GN",
                        WIDTH_PER_GROUP=32,
                        RES2_OUT_CHANNELS=32,
                        STEM_OUT_CHANNELS=32,
                    ),
                    FPN=dict(OUT_CHANNELS=32),
                    FCOS=dict(NUM_CLASSES=2, NUM_CONVS=2),
                ),
                DATASETS=dict(TRAIN=("my_train",), TEST=("my_val",)),
                INPUT=dict(
                    AUG=dict(
                        TRAIN_PIPELINES=[("ResizeShortestEdge", size)],
                        TEST_PIPELINES=[("ResizeShortestEdge", size)],
                    )
                ),
                DATALOADER=dict(NUM_WORKERS=0),
                SOLVER=dict(
                    IMS_PER_BATCH=2, BASE_LR=0.002, MAX_ITER=2, STEPS=(1,), WARMUP_ITERS=1,
                    CHECKPOINT_PERIOD=2,
                ),
                SEED=3,
            )
        )


config = MyDataConfig()
"""

NET = """
from cvpods.modeling import FCOS, FCOSHead


def build_model(cfg):
    return FCOS(cfg, head_cls=FCOSHead)
"""


def _console_script(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    assert path.is_file(), f"{path} is missing: install the project (pip install -e .)"
    return str(path)


def _run(command: str, folder: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [_console_script(command)], cwd=folder, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_a_dataset_registered_in_config_py_trains_and_tests(tmp_path: Path) -> None:
    json_file = write_tiny_coco(tmp_path / "mydata")
    folder = tmp_path / "my_experiment"
    folder.mkdir()
    config = CONFIG.format(json=str(json_file), images=str(tmp_path / "mydata" / "images"))
    (folder / "config.py").write_text(textwrap.dedent(config))
    (folder / "net.py").write_text(textwrap.dedent(NET))

    _run("cvpods_train", folder)
    results_path = folder / "log" / "inference" / "my_val" / "results.json"
    trained = json.loads(results_path.read_text())
    assert set(trained["bbox"]) >= {"AP", "AP50", "AP-box", "AP-disc"}
    assert (folder / "log" / "model_final.pth").is_file()

    results_path.unlink()
    _run("cvpods_test", folder)
    assert json.loads(results_path.read_text())["bbox"].keys() == trained["bbox"].keys()


@pytest.fixture
def forget(tmp_path: Path):
    names: list[str] = []
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_registering_the_same_dataset_twice_is_a_no_op(tmp_path: Path, forget) -> None:
    json_file = write_tiny_coco(tmp_path, num_images=1)
    forget.append("twice")
    register_coco_instances("twice", json_file, tmp_path / "images")
    register_coco_instances("twice", str(json_file), str(tmp_path / "images"))
    dicts = DatasetCatalog.get("twice")
    assert [d["image_id"] for d in dicts] == [100]
    assert MetadataCatalog.get("twice").thing_classes == ["box", "disc"]


def test_registering_a_taken_name_with_other_files_names_both(tmp_path: Path, forget) -> None:
    json_file = write_tiny_coco(tmp_path, num_images=1)
    forget.append("taken")
    register_coco_instances("taken", json_file, tmp_path / "images")
    with pytest.raises(KeyError, match="already registered with other arguments") as error:
        register_coco_instances("taken", json_file, tmp_path / "elsewhere")
    assert str(tmp_path / "images") in str(error.value)
    assert str(tmp_path / "elsewhere") in str(error.value)
    # overwrite=True replaces it.
    register_coco_instances("taken", json_file, tmp_path / "elsewhere", overwrite=True)
    assert MetadataCatalog.get("taken").image_root == str(tmp_path / "elsewhere")


def test_catalog_accepts_an_equivalent_loader_and_refuses_a_different_one(forget) -> None:
    forget.append("lambdas")

    def make_loader(count: int):
        return lambda: [{"image_id": i} for i in range(count)]

    DatasetCatalog.register("lambdas", make_loader(2))
    DatasetCatalog.register("lambdas", make_loader(2))  # re-created, same code and values
    assert len(DatasetCatalog.get("lambdas")) == 2
    with pytest.raises(KeyError, match="different loader"):
        DatasetCatalog.register("lambdas", make_loader(3))
    assert len(DatasetCatalog.get("lambdas")) == 2
