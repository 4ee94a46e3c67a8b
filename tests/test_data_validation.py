"""Issue 13, item 4: bad data is found when the dataset is loaded, before training.

Missing, garbage and mis-sized images; malformed annotations; empty test sets; strict JSON
results. The image-check cache goes to a per-test $CVPODS_CACHE.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine_support import (  # noqa: F401 - autouse fixtures
    one_torch_thread,
    write_fake_experiment,
)
from test_robustness_support import write_coco, write_tiny_fcos_experiment

from cvpods.configs import FCOSConfig
from cvpods.data import DatasetCatalog, MetadataCatalog, register_coco_instances
from cvpods.data import validation as validation_module
from cvpods.data.build import build_test_loader, build_train_loader
from cvpods.data.validation import BadDataError, check_image_files, image_check_cache_dir
from cvpods.engine import DefaultTrainer
from cvpods.engine.defaults import write_json_atomic
from cvpods.engine.launcher import load_experiment_with_trainer, prepare_config
from cvpods.evaluation import COCOEvaluator
from cvpods.structures import Boxes, Instances


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CVPODS_CACHE", str(cache))
    return cache


@pytest.fixture
def register():
    names: list[str] = []

    def _register(name: str, json_file: Path, image_root: Path) -> str:
        register_coco_instances(name, str(json_file), str(image_root), overwrite=True)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _cfg(train: str, test: str = "") -> FCOSConfig:
    cfg = FCOSConfig()
    cfg.DATASETS.TRAIN = (train,)
    cfg.DATASETS.TEST = (test,) if test else ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SEED = 1
    return cfg


def _break_two_images(root: Path) -> tuple[Path, Path]:
    missing, garbage = root / "images" / "img_1.png", root / "images" / "img_2.png"
    missing.unlink()
    garbage.write_bytes(os.urandom(300))
    return missing, garbage


# ------------------------------------------------------------------------------ image files
def test_missing_and_garbage_images_stop_the_training_loader_at_once(
    tmp_path: Path, register
) -> None:
    """Before: a short run over this set only failed if it happened to sample a bad image."""
    json_file = write_coco(tmp_path / "d", num_images=6)
    missing, garbage = _break_two_images(tmp_path / "d")
    name = register("bad_images", json_file, tmp_path / "d" / "images")
    with pytest.raises(BadDataError) as info:
        build_train_loader(_cfg(name))
    message = str(info.value)
    assert message.startswith("dataset 'bad_images': 2 of 6 images cannot be used:")
    assert f"{missing}: no such file" in message
    assert f"{garbage}: not a readable image" in message
    assert "DATASETS.SKIP_BAD_DATA True" in message


def test_skip_bad_data_leaves_them_out_with_a_count(
    tmp_path: Path, register, caplog: pytest.LogCaptureFixture
) -> None:
    json_file = write_coco(tmp_path / "d", num_images=6)
    missing, _ = _break_two_images(tmp_path / "d")
    name = register("bad_images_skipped", json_file, tmp_path / "d" / "images")
    cfg = _cfg(name)
    cfg.DATASETS.SKIP_BAD_DATA = True
    with caplog.at_level("WARNING", logger="cvpods.data.validation"):
        loader = build_train_loader(cfg)
    assert "skipped 2 of 6 images that cannot be used" in caplog.text
    assert str(missing) in caplog.text
    batch = next(iter(loader))
    assert all(os.path.exists(d["file_name"]) for d in batch)


def test_an_image_of_another_size_than_annotated(tmp_path: Path) -> None:
    json_file = write_coco(tmp_path / "d", num_images=2)
    data = json.loads(json_file.read_text())
    data["images"][1]["height"] = 47
    dicts = [
        {**i, "file_name": str(tmp_path / "d" / "images" / i["file_name"])} for i in data["images"]
    ]
    with pytest.raises(BadDataError, match=r"img_1.png: the image is 48x64 \(HxW\) but its "):
        check_image_files(dicts, "sized")


def test_exif_rotation_is_applied_as_the_loader_does(tmp_path: Path) -> None:
    """OpenCV rotates EXIF-oriented JPEGs when decoding; the check must see the same size."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40x60 (HxW), decoded 60x40
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path, exif=exif)
    good = {"file_name": str(path), "height": 60, "width": 40}
    assert check_image_files([good], "rotated") == [good]
    with pytest.raises(BadDataError, match="the image is 60x40"):
        check_image_files([{**good, "height": 40, "width": 60}], "rotated")


def test_checks_are_parallel_and_cached_by_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache: Path
) -> None:
    json_file = write_coco(tmp_path / "d", num_images=5)
    data = json.loads(json_file.read_text())
    dicts = [
        {**i, "file_name": str(tmp_path / "d" / "images" / i["file_name"])} for i in data["images"]
    ]
    dataset_files = sorted(p.name for p in (tmp_path / "d").rglob("*"))
    reads: list[str] = []
    threads: set[str] = set()
    real = validation_module.read_image_size

    def counting(path: str) -> tuple[int, int]:
        reads.append(path)
        threads.add(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(validation_module, "read_image_size", counting)
    monkeypatch.setattr(validation_module, "MIN_FILES_TO_CACHE", 1)
    check_image_files(dicts, "cached")
    assert sorted(reads) == sorted(d["file_name"] for d in dicts)
    assert all(name.startswith("image-check") for name in threads)  # the thread pool
    cache_files = list(Path(image_check_cache_dir()).glob("*.json"))
    assert len(cache_files) == 1 and str(private_cache) in str(cache_files[0])
    assert sorted(p.name for p in (tmp_path / "d").rglob("*")) == dataset_files  # untouched

    reads.clear()
    check_image_files(dicts, "cached")
    assert reads == []  # nothing changed: only stat

    changed = dicts[2]["file_name"]
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    check_image_files(dicts, "cached")
    assert reads == [changed]


# ------------------------------------------------------------------------------ annotations
def test_unknown_image_ids_and_malformed_boxes_are_reported_at_load(
    tmp_path: Path, register
) -> None:
    json_file = write_coco(tmp_path / "d", num_images=2)
    data = json.loads(json_file.read_text())
    bad = [
        {"id": 11, "image_id": 999, "category_id": 4, "bbox": [1, 1, 5, 5]},
        {"id": 12, "image_id": 100, "category_id": 4, "bbox": ["1", "1", "5", "5"]},
        {"id": 13, "image_id": 101, "category_id": 9, "bbox": [1, 1, 5]},
        {"id": 14, "image_id": 101, "category_id": 9, "bbox": [1, float("nan"), 5, 5]},
    ]
    data["annotations"] += [{**a, "area": 25, "iscrowd": 0} for a in bad]
    json_file.write_text(json.dumps(data))  # NaN is written as the (non-standard) NaN token
    name = register("bad_annotations", json_file, tmp_path / "d" / "images")
    with pytest.raises(BadDataError) as info:
        build_test_loader(_cfg(name, name), name)
    message = str(info.value)
    assert message.startswith(f"{json_file}: 4 problems in the annotations:")
    assert "annotation id 11 (image_id 999): image_id 999 is not the id of any image" in message
    assert "annotation id 12 (image_id 100): bbox ['1', '1', '5', '5'] is not 4 finite" in message
    assert "annotation id 13 (image_id 101): bbox [1, 1, 5] is not 4 finite numbers" in message
    assert "annotation id 14 (image_id 101): bbox [1, nan, 5, 5]" in message


def test_skipped_bad_annotations_are_left_out_of_the_evaluation_too(
    tmp_path: Path, register
) -> None:
    """pycocotools used to fail on such ground truth after the whole inference."""
    json_file = write_coco(tmp_path / "d", num_images=2)
    data = json.loads(json_file.read_text())
    data["annotations"].append(
        {"id": 12, "image_id": 100, "category_id": 4, "bbox": "1,1,5,5", "area": 25, "iscrowd": 0}
    )
    json_file.write_text(json.dumps(data))
    name = register("bad_gt_skipped", json_file, tmp_path / "d" / "images")
    cfg = _cfg(name, name)
    cfg.DATASETS.SKIP_BAD_DATA = True
    evaluator = COCOEvaluator(name, cfg)
    boxes = Boxes(torch.tensor([[5.0, 5.0, 26.0, 26.0]]))
    for image_id, cls in ((100, 0), (101, 1)):
        instances = Instances((48, 64), pred_boxes=boxes, scores=torch.ones(1))
        instances.pred_classes = torch.tensor([cls])
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------ empty test set
def test_an_empty_test_set_stops_the_trainer_before_training(
    tmp_path: Path, register, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_file = tmp_path / "empty.json"
    json_file.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    name = register("empty_val", json_file, tmp_path)
    folder = write_fake_experiment(tmp_path / "exp")
    cfg, build_model, trainer_class = load_experiment_with_trainer(str(folder))
    prepare_config(cfg, str(folder), ["DATASETS.TEST", f"('{name}',)"])
    with pytest.raises(BadDataError) as info:
        trainer_class(cfg, build_model)  # before: failed only in the evaluation after training
    message = str(info.value)
    assert f"dataset 'empty_val' (annotations: {json_file}) has no images" in message
    assert "DATASETS.TEST" in message


# ------------------------------------------------------------------------------ results.json
def _strict_load(text: str) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_results_json_is_strict_with_null_and_a_reason(tmp_path: Path, register) -> None:
    """All boxes are small: APm, APl and the AP of an absent class are undefined (NaN)."""
    json_file = write_coco(tmp_path / "d", num_images=2)
    data = json.loads(json_file.read_text())
    data["categories"].append({"id": 20, "name": "absent"})
    json_file.write_text(json.dumps(data))
    name = register("strict_results", json_file, tmp_path / "d" / "images")
    cfg = _cfg(name, name)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.INPUT.AUG.TEST_PIPELINES = []

    class Perfect(torch.nn.Module):
        def forward(self, inputs):
            outputs = []
            for inp in inputs:
                cls = 0 if inp["image_id"] == 100 else 1
                instances = Instances(
                    (inp["height"], inp["width"]),
                    pred_boxes=Boxes(torch.tensor([[5.0, 5.0, 26.0, 26.0]])),
                    scores=torch.ones(1),
                    pred_classes=torch.tensor([cls]),
                )
                outputs.append({"instances": instances})
            return outputs

    results = DefaultTrainer.test(cfg, Perfect())
    assert math.isnan(results[name]["bbox"]["APm"])  # in memory: NaN, as before
    text = (tmp_path / "out" / "inference" / name / "results.json").read_text()
    written = _strict_load(text)
    assert written["bbox"]["AP"] == pytest.approx(100.0)
    assert written["bbox"]["APm"] is None and written["bbox"]["AP-absent"] is None
    reasons = written["null_reasons"]
    assert reasons["bbox/APm"] == "no medium ground-truth box among the evaluated images"
    assert reasons["bbox/AP-absent"] == (
        "no ground-truth box of class 'absent' among the evaluated images"
    )
    detections = tmp_path / "out" / "inference" / name / "coco_instances_results.json"
    assert len(_strict_load(detections.read_text())) == 2


def test_write_json_atomic_never_writes_nan(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_atomic({"head_complexity": {"avg_gflops": float("nan"), "num_images": 0}}, path)
    written = _strict_load(path.read_text())
    assert written["head_complexity"] == {"avg_gflops": None, "num_images": 0}
    assert written["null_reasons"] == {"head_complexity/avg_gflops": "no image was evaluated"}


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_cvpods_train_over_bad_images_fails_before_training(tmp_path: Path) -> None:
    """The issue's run: 4 iterations over a set with a missing and a garbage JPEG exited 0."""
    json_file = write_coco(tmp_path / "d", num_images=8, extension=".jpg")
    missing = tmp_path / "d" / "images" / "img_1.jpg"
    garbage = tmp_path / "d" / "images" / "img_5.jpg"
    missing.unlink()
    garbage.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    images = str(tmp_path / "d" / "images")
    register = (
        "from cvpods.data import register_coco_instances\n"
        f"register_coco_instances('e2e_bad', {str(json_file)!r}, {images!r})\n"
    )
    folder = write_tiny_fcos_experiment(
        tmp_path / "exp", train="e2e_bad", test="e2e_bad", register=register
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", CVPODS_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-c", "from cvpods.engine.launcher import train_main; train_main()"]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()
    text = "\n".join(last)
    assert "cvpods_train: error: dataset 'e2e_bad': 2 of 8 images cannot be used:" in text
    assert f"{missing}: no such file" in text and f"{garbage}: not a readable image" in text
    assert not (folder / "log" / "model_final.pth").exists()
