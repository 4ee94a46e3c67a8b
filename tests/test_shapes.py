"""The generated shapes dataset: determinism, atomic/resumable generation, annotation sanity."""

from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from cvpods.configs import FCOSConfig
from cvpods.data import DatasetCatalog, MetadataCatalog, register_shapes_from_config
from cvpods.data.datasets import shapes as shapes_module
from cvpods.data.datasets.shapes import SHAPE_CLASSES, ShapesSpec, generate_shapes

TINY = ShapesSpec("train", num_images=8, min_size=64, max_size=96, seed=1)


def _hashes(folder: str) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_same_seed_gives_identical_files(tmp_path):
    a = generate_shapes(TINY, tmp_path / "a")
    b = generate_shapes(TINY, tmp_path / "b")
    folder_a, folder_b = os.path.dirname(a.json_file), os.path.dirname(b.json_file)
    hashes = _hashes(folder_a)
    assert len(hashes) == TINY.num_images + 1  # images + annotations.json
    assert hashes == _hashes(folder_b)


def test_parameters_change_content_and_folder(tmp_path):
    base = generate_shapes(TINY, tmp_path)
    other_seed = ShapesSpec("train", 8, 64, 96, seed=2)
    other = generate_shapes(other_seed, tmp_path)
    val = generate_shapes(ShapesSpec("val", 8, 64, 96, seed=1), tmp_path)
    folders = {os.path.dirname(f.json_file) for f in (base, other, val)}
    assert len(folders) == 3
    assert _hashes(os.path.dirname(base.json_file)) != _hashes(os.path.dirname(other.json_file))
    names = {ShapesSpec("train", n, 64, s, seed).folder_name for n in (8, 9) for s in (96, 97)
             for seed in (0, 1)}  # fmt: skip
    assert len(names) == 8


def test_annotations_are_valid_coco(tmp_path):
    spec = ShapesSpec("val", num_images=24, min_size=96, max_size=128, seed=0)
    files = generate_shapes(spec, tmp_path)
    with open(files.json_file) as f:
        coco = json.load(f)
    cat_ids = [c["id"] for c in coco["categories"]]
    assert cat_ids == list(range(1, len(SHAPE_CLASSES) + 1))
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)
    images = {img["id"]: img for img in coco["images"]}
    assert len(images) == spec.num_images
    sides = []
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and ann["area"] > 0 and ann["iscrowd"] == 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["category_id"] in cat_ids
        assert ann["area"] <= w * h
        sides.append(max(w, h))
    assert min(sides) < 16 and max(sides) > 64  # small and large objects
    for img in coco["images"][:4]:
        image = cv2.imread(os.path.join(files.image_root, img["file_name"]))
        assert image.shape == (img["height"], img["width"], 3)
        assert spec.min_size <= min(image.shape[:2]) <= max(image.shape[:2]) <= spec.max_size
        assert image.std() > 5  # textured/noisy, not flat


class _Interrupt(Exception):
    pass


def test_interrupted_generation_is_never_complete_and_resumes(tmp_path, monkeypatch, caplog):
    render = shapes_module._render
    calls = {"n": 0}

    def failing_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise _Interrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(shapes_module, "_render", failing_render)
    with pytest.raises(_Interrupt):
        generate_shapes(TINY, tmp_path)
    final = shapes_module.shapes_split_dir(TINY, str(tmp_path))
    assert not os.path.exists(final)  # a half-written set never has the final name
    partial = final + ".partial"
    assert sorted(os.listdir(os.path.join(partial, "images"))) == [
        "000000.jpg", "000001.jpg", "000002.jpg"
    ]  # fmt: skip
    assert not os.path.exists(os.path.join(partial, "annotations.json"))
    # A write cut short by the interruption leaves a temporary file behind.
    with open(os.path.join(partial, "images", "000003.jpg.tmp999"), "wb") as f:
        f.write(b"\xff\xd8 truncated")

    monkeypatch.setattr(shapes_module, "_render", render)
    calls["n"] = 0
    with caplog.at_level("INFO", logger="cvpods.data.datasets.shapes"):
        files = generate_shapes(TINY, tmp_path)
    assert "kept 3 images" in caplog.text
    assert not os.path.exists(partial)
    assert _hashes(os.path.dirname(files.json_file)) == _hashes(
        os.path.dirname(generate_shapes(TINY, tmp_path / "clean").json_file)
    )


def test_complete_split_is_not_regenerated(tmp_path, monkeypatch):
    generate_shapes(TINY, tmp_path)

    def no_render(*args, **kwargs):
        raise AssertionError("a complete split must not be rendered again")

    monkeypatch.setattr(shapes_module, "_render", no_render)
    generate_shapes(TINY, tmp_path)


def test_foreign_incomplete_folder_is_an_error(tmp_path):
    os.makedirs(shapes_module.shapes_split_dir(TINY, str(tmp_path)))
    with pytest.raises(RuntimeError, match="Delete it"):
        generate_shapes(TINY, tmp_path)


def test_spec_validation():
    with pytest.raises(ValueError, match="split"):
        ShapesSpec("test", 8, 64, 96, 0)
    with pytest.raises(ValueError, match="min_size"):
        ShapesSpec("train", 8, 96, 64, 0)


def test_registration_from_config_uses_dataset_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path))
    cfg = FCOSConfig()
    cfg.DATASETS.SHAPES.update(NUM_TRAIN=6, NUM_VAL=4, MIN_SIZE=64, MAX_SIZE=80, SEED=5)
    register_shapes_from_config(cfg)
    dicts = DatasetCatalog.get("shapes_val")
    assert len(dicts) == 4
    metadata = MetadataCatalog.get("shapes_val")
    assert metadata.json_file.startswith(str(tmp_path))
    assert "val_n4_64-80px_seed5" in metadata.json_file
    assert metadata.thing_classes == list(SHAPE_CLASSES)
    assert metadata.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(7)}
    labels = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert labels <= set(range(len(SHAPE_CLASSES)))
    for d in dicts:
        image = cv2.imread(d["file_name"])
        assert image.shape[:2] == (d["height"], d["width"])
    assert np.all([os.path.isfile(d["file_name"]) for d in DatasetCatalog.get("shapes_train")])
    cfg.DATASETS.SHAPES.BOGUS = 1
    with pytest.raises(KeyError, match="BOGUS"):
        register_shapes_from_config(cfg)
