"""Loading COCO-format data: catalog, class-id mapping, and bad data handled loudly."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from cvpods.configs import FCOSConfig
from cvpods.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    get_detection_dataset_dicts,
    load_coco_json,
    register_coco_instances,
)
from cvpods.data.validation import skipping_bad_data

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "bird"}]


def _write_dataset(root, images, annotations, categories=CATEGORIES):
    """Write ``images`` ([(file_name, h, w)]) as random JPEGs and a COCO json; return its path."""
    os.makedirs(root / "images", exist_ok=True)
    rng = np.random.default_rng(0)
    coco_images = []
    for i, (name, h, w) in enumerate(images, start=1):
        image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / name), image)
        coco_images.append({"id": i, "file_name": name, "height": h, "width": w})
    anns = [{"id": i, "iscrowd": 0, **a} for i, a in enumerate(annotations, start=1)]
    for a in anns:
        if len(a["bbox"]) == 4:
            a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    path = root / "train.json"
    path.write_text(
        json.dumps({"images": coco_images, "annotations": anns, "categories": categories})
    )
    return str(path)


@pytest.fixture
def register(tmp_path):
    names = []

    def _register(name, json_file, image_root):
        register_coco_instances(name, json_file, image_root, overwrite=True)
        names.append(name)

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_contiguous_ids_and_metadata(tmp_path, register):
    json_file = _write_dataset(
        tmp_path,
        [("a.jpg", 40, 50), ("b.jpg", 30, 30)],
        [
            {"image_id": 1, "category_id": 12, "bbox": [1, 2, 10, 20]},
            {"image_id": 1, "category_id": 3, "bbox": [5, 5, 5, 5]},
            {"image_id": 2, "category_id": 7, "bbox": [0, 0, 30, 30]},
        ],
    )
    register("tiny_coco", json_file, str(tmp_path / "images"))
    metadata = MetadataCatalog.get("tiny_coco")
    assert metadata.json_file == json_file and metadata.evaluator_type == "coco"
    dicts = DatasetCatalog.get("tiny_coco")
    assert metadata.thing_classes == ["cat", "dog", "bird"]
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 12: 2}
    first = dicts[0]
    assert first["file_name"] == str(tmp_path / "images" / "a.jpg")
    assert (first["height"], first["width"], first["image_id"]) == (40, 50, 1)
    assert [a["category_id"] for a in first["annotations"]] == [2, 0]
    assert first["annotations"][0]["bbox"] == [1.0, 2.0, 11.0, 22.0]  # XYXY


def test_unknown_dataset_name_lists_registered_names():
    with pytest.raises(KeyError, match="shapes_val"):
        DatasetCatalog.get("shapes_vall")


def test_builtin_coco_missing_files_names_path_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get("coco_2017_val")
    message = str(info.value)
    assert str(tmp_path / "coco" / "annotations" / "instances_val2017.json") in message
    assert "CVPODS_DATASETS" in message


def test_builtin_coco_layout_is_found(tmp_path, monkeypatch):
    coco = tmp_path / "coco"
    json_file = _write_dataset(coco, [("x.jpg", 20, 20)], [])
    os.makedirs(coco / "annotations")
    os.replace(json_file, coco / "annotations" / "instances_val2017.json")
    os.rename(coco / "images", coco / "val2017")
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path))
    dicts = DatasetCatalog.get("coco_2017_val")
    assert dicts[0]["file_name"] == str(coco / "val2017" / "x.jpg")


def test_bad_boxes_are_clipped_or_dropped_with_a_log(tmp_path, caplog):
    json_file = _write_dataset(
        tmp_path,
        [("a.jpg", 40, 50)],
        [
            {"image_id": 1, "category_id": 3, "bbox": [40, 30, 20, 20]},  # reaches outside
            {"image_id": 1, "category_id": 3, "bbox": [60, 50, 5, 5]},  # entirely outside
            {"image_id": 1, "category_id": 7, "bbox": [5, 5, 0, 10]},  # zero width
            {"image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10], "area": 0},  # zero area
            {"image_id": 1, "category_id": 7, "bbox": [5, 5, 10]},  # malformed
            {"image_id": 1, "category_id": 12, "bbox": [1, 1, 8, 8]},  # fine
        ],
    )
    # A malformed box is an error unless bad data is skipped (DATASETS.SKIP_BAD_DATA).
    with pytest.raises(ValueError, match=r"annotation id 5 \(image_id 1\): bbox \[5, 5, 10\]"):
        load_coco_json(json_file, str(tmp_path / "images"))
    with caplog.at_level("WARNING", logger="cvpods.data.datasets.coco"), skipping_bad_data(True):
        dicts = load_coco_json(json_file, str(tmp_path / "images"))
    boxes = [a["bbox"] for a in dicts[0]["annotations"]]
    assert boxes == [[40.0, 30.0, 50.0, 40.0], [1.0, 1.0, 9.0, 9.0]]
    text = caplog.text
    assert "dropped 4 annotations" in text
    assert "1 malformed" in text and "2 with zero width/height/area" in text
    assert "1 entirely outside" in text and "clipped 1 boxes" in text


def test_unknown_category_is_an_error(tmp_path):
    json_file = _write_dataset(
        tmp_path, [("a.jpg", 20, 20)], [{"image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]}]
    )
    with pytest.raises(ValueError, match="category_id 99"):
        load_coco_json(json_file, str(tmp_path / "images"))


def test_missing_or_broken_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json(str(tmp_path / "nope.json"), str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_coco_json(str(bad), str(tmp_path))


def test_images_without_annotations_filtered_for_training_only(tmp_path, register, caplog):
    json_file = _write_dataset(
        tmp_path,
        [("a.jpg", 20, 20), ("empty.jpg", 20, 20), ("crowd.jpg", 20, 20)],
        [
            {"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]},
            {"image_id": 3, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},
        ],
    )
    register("tiny_empty", json_file, str(tmp_path / "images"))
    with caplog.at_level("INFO", logger="cvpods.data.detection_utils"):
        train = get_detection_dataset_dicts(["tiny_empty"], filter_empty=True)
    assert [d["image_id"] for d in train] == [1]
    assert "Removed 2 images without (non-crowd) annotations" in caplog.text
    test = get_detection_dataset_dicts(["tiny_empty"], filter_empty=False)
    assert [d["image_id"] for d in test] == [1, 2, 3]


def test_crowd_boxes_are_not_training_targets(tmp_path):
    json_file = _write_dataset(
        tmp_path,
        [("a.jpg", 20, 30)],
        [
            {"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            {"image_id": 1, "category_id": 7, "bbox": [2, 3, 4, 5]},
        ],
    )
    dicts = load_coco_json(json_file, str(tmp_path / "images"))
    cfg = FCOSConfig()
    cfg.INPUT.AUG.TRAIN_PIPELINES = []
    out = DatasetMapper(cfg, is_train=True)(dicts[0])
    assert out["instances"].gt_classes.tolist() == [1]
    assert out["instances"].gt_boxes.tensor.tolist() == [[2.0, 3.0, 6.0, 8.0]]


def test_missing_corrupt_and_resized_image_files_name_the_file(tmp_path):
    json_file = _write_dataset(
        tmp_path,
        [("gone.jpg", 20, 20), ("corrupt.jpg", 20, 20), ("size.jpg", 20, 20)],
        [{"image_id": i, "category_id": 3, "bbox": [1, 1, 5, 5]} for i in (1, 2, 3)],
    )
    os.remove(tmp_path / "images" / "gone.jpg")
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    cv2.imwrite(str(tmp_path / "images" / "size.jpg"), np.zeros((25, 20, 3), np.uint8))
    dicts = load_coco_json(json_file, str(tmp_path / "images"))
    mapper = DatasetMapper(FCOSConfig(), is_train=True)
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        mapper(dicts[0])
    with pytest.raises(OSError, match="corrupt.jpg"):
        mapper(dicts[1])
    with pytest.raises(ValueError, match="size.jpg.*25x20"):
        mapper(dicts[2])


def test_metadata_values_cannot_silently_change():
    metadata = MetadataCatalog.get("tiny_meta_test")
    try:
        metadata.thing_classes = ["a"]
        metadata.thing_classes = ["a"]  # same value: fine
        with pytest.raises(ValueError, match="thing_classes"):
            metadata.thing_classes = ["b"]
        with pytest.raises(AttributeError, match="no attribute 'missing'"):
            _ = metadata.missing
    finally:
        MetadataCatalog.remove("tiny_meta_test")
