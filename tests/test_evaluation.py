"""COCOEvaluator against pycocotools, and the inference loop with a fake model."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from cvpods.configs import FCOSConfig
from cvpods.data import DatasetCatalog, build_test_loader
from cvpods.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from cvpods.structures import Boxes, Instances


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "data"))
    cfg = FCOSConfig()
    cfg.DATASETS.TEST = ("shapes_val",)
    cfg.DATASETS.SHAPES.update(NUM_TRAIN=4, NUM_VAL=10, MIN_SIZE=64, MAX_SIZE=96, SEED=2)
    cfg.INPUT.AUG.TEST_PIPELINES = [
        ("ResizeShortestEdge", dict(short_edge_length=64, max_size=100, sample_style="choice"))
    ]
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def _perturbed_predictions(dataset_dicts, seed=0, drop_every=4):
    """``{image_id: Instances}``: ground-truth boxes, jittered, with random scores, some missed."""
    generator = torch.Generator().manual_seed(seed)
    predictions = {}
    for d in dataset_dicts:
        anns = [a for i, a in enumerate(d["annotations"]) if i % drop_every != drop_every - 1]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = boxes + torch.randn(boxes.shape, generator=generator) * 1.5
        classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        if len(classes):  # one confidently wrong class per image
            classes[0] = (classes[0] + 1) % 7
        predictions[d["image_id"]] = Instances(
            (d["height"], d["width"]),
            pred_boxes=Boxes(boxes),
            scores=torch.rand(len(anns), generator=generator),
            pred_classes=classes,
        )
    return predictions


def _pycocotools_ap(json_file, results_file, image_ids):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        dt = gt.loadRes(results_file)
        coco_eval = COCOeval(gt, dt, "bbox")
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def test_ap_equals_pycocotools_on_the_written_file(cfg, tmp_path, caplog):
    output_dir = str(tmp_path / "out")
    evaluator = COCOEvaluator("shapes_val", cfg, distributed=True, output_dir=output_dir)
    dicts = DatasetCatalog.get("shapes_val")
    predictions = _perturbed_predictions(dicts)
    evaluator.reset()
    for d in dicts:
        evaluator.process(
            [{"image_id": d["image_id"]}], [{"instances": predictions[d["image_id"]]}]
        )
    with caplog.at_level("INFO", logger="cvpods.evaluation"):
        results = evaluator.evaluate()
    bbox = results["bbox"]

    results_file = os.path.join(output_dir, "coco_instances_results.json")
    with open(results_file) as f:
        written = json.load(f)
    assert len(written) == sum(len(p) for p in predictions.values())
    assert {r["category_id"] for r in written} <= set(range(1, 8))  # original ids
    first = written[0]
    box = predictions[first["image_id"]].pred_boxes.tensor[0].tolist()
    assert first["bbox"] == pytest.approx(
        [box[0], box[1], box[2] - box[0], box[3] - box[1]], abs=1e-3
    )

    stats = _pycocotools_ap(
        evaluator.metadata.json_file, results_file, [d["image_id"] for d in dicts]
    )
    for name, value in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), stats):
        expected = value * 100 if value >= 0 else float("nan")
        assert bbox[name] == pytest.approx(expected, nan_ok=True)
    assert 20 < bbox["AP"] < 95  # the perturbation really costs AP
    per_class = {k: v for k, v in bbox.items() if k.startswith("AP-")}
    assert sorted(per_class) == sorted(f"AP-{c}" for c in evaluator.metadata.thing_classes)
    assert "Per-category box AP" in caplog.text and "| AP " in caplog.text
    assert not [n for n in os.listdir(output_dir) if ".tmp" in n]


def test_perfect_predictions_give_ap_100(cfg):
    evaluator = COCOEvaluator("shapes_val", cfg, distributed=False)
    for d in DatasetCatalog.get("shapes_val"):
        boxes = torch.tensor([a["bbox"] for a in d["annotations"]]).reshape(-1, 4)
        # COCO json boxes are integers: the dataset dict boxes equal them exactly.
        inst = Instances(
            (d["height"], d["width"]),
            pred_boxes=Boxes(boxes),
            scores=torch.ones(len(boxes)),
            pred_classes=torch.tensor([a["category_id"] for a in d["annotations"]]).long(),
        )
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()["bbox"]
    assert results["AP"] == pytest.approx(100.0)


def test_no_detections_give_ap_zero(cfg, tmp_path):
    evaluator = COCOEvaluator("shapes_val", cfg, output_dir=str(tmp_path / "out"))
    for d in DatasetCatalog.get("shapes_val"):
        empty = Instances(
            (d["height"], d["width"]),
            pred_boxes=Boxes(torch.zeros(0, 4)),
            scores=torch.zeros(0),
            pred_classes=torch.zeros(0, dtype=torch.int64),
        )
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": empty}])
    results = evaluator.evaluate()["bbox"]
    assert results["AP"] == 0.0 and results["AP50"] == 0.0
    with open(tmp_path / "out" / "coco_instances_results.json") as f:
        assert json.load(f) == []


def test_unknown_predicted_class_is_an_error(cfg):
    evaluator = COCOEvaluator("shapes_val", cfg)
    d = DatasetCatalog.get("shapes_val")[0]
    inst = Instances(
        (d["height"], d["width"]),
        pred_boxes=Boxes(torch.tensor([[0.0, 0.0, 5.0, 5.0]])),
        scores=torch.ones(1),
        pred_classes=torch.tensor([9]),
    )
    with pytest.raises(ValueError, match="predicted class 9"):
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])


class _Complexity:
    def __init__(self) -> None:
        self._values: list[float] = []
        self.resets = 0

    def reset(self) -> None:
        self._values, self.resets = [], self.resets + 1

    def values(self) -> list[float]:
        return list(self._values)


class _FakeDetector(nn.Module):
    """Returns stored predictions for each input image; records per-image 'GFLOPs'."""

    def __init__(self, predictions: dict[int, Instances]) -> None:
        super().__init__()
        self.predictions = predictions
        self.head_complexity = _Complexity()
        self.head_complexity._values = [99.0]  # stale value: must be reset
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, batched_inputs):
        self.seen.append((self.training, torch.is_grad_enabled()))
        outputs = []
        for item in batched_inputs:
            if hasattr(self, "head_complexity"):
                self.head_complexity._values.append(float(item["image_id"]))
            inst = self.predictions[item["image_id"]]
            assert (item["height"], item["width"]) == inst.image_size
            outputs.append({"instances": inst})
        return outputs


def test_inference_on_dataset_with_fake_model(cfg, tmp_path):
    loader = build_test_loader(cfg, "shapes_val")
    dicts = DatasetCatalog.get("shapes_val")
    model = _FakeDetector(_perturbed_predictions(dicts))
    model.train()
    evaluator = COCOEvaluator("shapes_val", cfg, output_dir=str(tmp_path / "out"))
    results = inference_on_dataset(model, loader, evaluator)

    assert model.training  # mode restored
    assert model.seen and all(not training and not grad for training, grad in model.seen)
    assert len(model.seen) == len(dicts)
    ids = [float(d["image_id"]) for d in dicts]
    assert results["head_complexity"] == {
        "avg_gflops": pytest.approx(sum(ids) / len(ids)),
        "min_gflops": min(ids),
        "max_gflops": max(ids),
        "num_images": len(ids),
    }
    direct = COCOEvaluator("shapes_val", cfg)
    for d in dicts:
        direct.process(
            [{"image_id": d["image_id"]}], [{"instances": model.predictions[d["image_id"]]}]
        )
    assert results["bbox"] == pytest.approx(direct.evaluate()["bbox"], nan_ok=True)

    text = print_csv_format(results)
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in text
    assert "AP-circle" not in text
    assert "avg_gflops" in text


def test_inference_on_dataset_unwraps_the_model(cfg):
    loader = build_test_loader(cfg, "shapes_val")
    dicts = DatasetCatalog.get("shapes_val")
    inner = _FakeDetector(_perturbed_predictions(dicts))
    results = inference_on_dataset(nn.DataParallel(inner), loader, None)
    assert inner.head_complexity.resets == 1
    assert results["head_complexity"]["num_images"] == len(dicts)

    del inner.head_complexity
    results = inference_on_dataset(nn.DataParallel(inner), loader, COCOEvaluator("shapes_val", cfg))
    assert set(results) == {"bbox"}
