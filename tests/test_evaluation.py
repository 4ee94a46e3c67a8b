"""COCOEvaluator against hand-computed AP and an independent COCO AP written here, and the
inference loop with a fake model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from cvpods.configs import FCOSConfig
from cvpods.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_test_loader,
    register_shapes_from_config,
)
from cvpods.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    HeadComplexityEvaluator,
    inference_on_dataset,
    print_csv_format,
)
from cvpods.layers import GateCost
from cvpods.structures import Boxes, Instances

# ---------------------------------------------------------------------------------------------
# An independent COCO box AP (the definition of cocodataset.org/#detection-eval), written from
# the definition, not from pycocotools: per image and category, detections (best score first,
# at most MAX_DETS) are matched greedily to the unmatched ground truth box of highest IoU >= t,
# preferring boxes inside the area range; a detection matched to a box outside the range, or
# unmatched and itself outside the range, is ignored. Per category and threshold, precision at
# recall r is the highest precision reached at any recall >= r (0 if r is not reached), averaged
# over r = 0, 0.01, ..., 1; AP averages that over t = 0.5, 0.55, ..., 0.95 and over the
# categories having ground truth in the range.

# The points are the floats COCO's evaluation uses (numpy.linspace, as its documented parameters
# recThrs / iouThrs): some are one ulp above i / 100 (0.35000000000000003, 0.7000000000000001,
# ...), so that a recall of exactly 7 / 10 does not reach the point "0.70" there.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
RECALL_POINTS = np.linspace(0.0, 1.0, 101).tolist()
AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
MAX_DETS = 100


def _iou_xywh(a: list[float], b: list[float]) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _category_ap(
    gts: dict, dets: dict, threshold: float, area: tuple[float, float]
) -> float | None:
    """``gts`` / ``dets``: ``{image_id: [...]}`` of one category; gt entries (box, area), det
    entries (box, score). None when the category has no ground truth in the area range."""
    inside = lambda value: area[0] <= value <= area[1]  # noqa: E731
    num_gt = sum(inside(a) for boxes in gts.values() for _, a in boxes)
    if num_gt == 0:
        return None
    scored = []  # (score, true positive) of the detections that count
    for image_id in sorted(set(gts) | set(dets)):
        truth = gts.get(image_id, [])
        taken = [False] * len(truth)
        ranked = sorted(dets.get(image_id, []), key=lambda d: -d[1])[:MAX_DETS]
        for box, score in ranked:
            choice = None
            for want_inside in (True, False):
                best = threshold
                for j, (gt_box, gt_area) in enumerate(truth):
                    if taken[j] or inside(gt_area) != want_inside:
                        continue
                    iou = _iou_xywh(box, gt_box)
                    if iou >= best:
                        choice, best = j, iou
                if choice is not None:
                    break
            if choice is None:
                if inside(box[2] * box[3]):
                    scored.append((score, False))
            else:
                taken[choice] = True
                if inside(truth[choice][1]):
                    scored.append((score, True))
    scored.sort(key=lambda d: -d[0])
    points, tp = [], 0
    for k, (_, hit) in enumerate(scored, start=1):
        tp += hit
        points.append((tp / num_gt, tp / k))  # (recall, precision)
    return sum(max((p for r, p in points if r >= r0), default=0.0) for r0 in RECALL_POINTS) / 101


def independent_coco_ap(gt_json: dict, detections: list[dict]) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl and AP-<category name> in percent (NaN: undefined) of COCO
    ``detections`` (image_id, category_id, XYWH bbox, score) against a COCO ``gt_json``."""
    assert not any(a.get("iscrowd", 0) for a in gt_json["annotations"]), "no crowd handling"
    categories = {c["id"]: c["name"] for c in gt_json["categories"]}
    gts = {c: {} for c in categories}
    dets = {c: {} for c in categories}
    for a in gt_json["annotations"]:
        gts[a["category_id"]].setdefault(a["image_id"], []).append((a["bbox"], a["area"]))
    for d in detections:
        dets[d["category_id"]].setdefault(d["image_id"], []).append((d["bbox"], d["score"]))

    def mean_ap(thresholds, area, cats=categories) -> float:
        values = [_category_ap(gts[c], dets[c], t, area) for c in cats for t in thresholds]
        values = [v for v in values if v is not None]
        return 100 * sum(values) / len(values) if values else float("nan")

    results = {
        "AP": mean_ap(IOU_THRESHOLDS, AREA_RANGES["all"]),
        "AP50": mean_ap([0.5], AREA_RANGES["all"]),
        "AP75": mean_ap([0.75], AREA_RANGES["all"]),
        "APs": mean_ap(IOU_THRESHOLDS, AREA_RANGES["small"]),
        "APm": mean_ap(IOU_THRESHOLDS, AREA_RANGES["medium"]),
        "APl": mean_ap(IOU_THRESHOLDS, AREA_RANGES["large"]),
    }
    for c, name in categories.items():
        results[f"AP-{name}"] = mean_ap(IOU_THRESHOLDS, AREA_RANGES["all"], [c])
    return results


def coco_detections(predictions: dict[int, Instances], category_ids: list[int]) -> list[dict]:
    """COCO result entries of ``{image_id: Instances}``; contiguous class i is the i-th smallest
    dataset category id."""
    entries = []
    for image_id, inst in predictions.items():
        for box, score, cls in zip(
            inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()
        ):
            x0, y0, x1, y1 = box
            entries.append(
                {
                    "image_id": image_id,
                    "category_id": sorted(category_ids)[cls],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
    return entries


def assert_same_metrics(ours: dict[str, float], expected: dict[str, float]) -> None:
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name


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
    register_shapes_from_config(cfg)  # the data layer registers datasets, not the evaluator
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


def test_ap_equals_an_independent_coco_ap(cfg, tmp_path, caplog):
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

    with open(evaluator.metadata.json_file) as f:
        gt_json = json.load(f)
    category_ids = [c["id"] for c in gt_json["categories"]]
    expected_entries = coco_detections(predictions, category_ids)
    # The written file: every detection, original category ids, XYWH boxes (3 decimals).
    with open(os.path.join(output_dir, "coco_instances_results.json")) as f:
        written = json.load(f)
    assert len(written) == len(expected_entries) == sum(len(p) for p in predictions.values())
    for ours, expected in zip(written, expected_entries):
        assert ours["image_id"] == expected["image_id"]
        assert ours["category_id"] == expected["category_id"]
        assert ours["bbox"] == pytest.approx(expected["bbox"], abs=1e-3)
        assert ours["score"] == pytest.approx(expected["score"], abs=1e-5)

    # The metrics, from the predictions (not the file) with the AP written above.
    assert_same_metrics(bbox, independent_coco_ap(gt_json, expected_entries))
    assert 20 < bbox["AP"] < 95  # the perturbation really costs AP
    assert "Per-category box AP" in caplog.text and "| AP " in caplog.text
    assert not [n for n in os.listdir(output_dir) if ".tmp" in n]


@pytest.fixture
def tiny_dataset():
    """One image; class "a" (dataset id 7) with 3 boxes, class "b" (dataset id 3) with 1 box."""
    name = "hand_ap_tiny"
    boxes_a = [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0]]
    annotations = [{"bbox": b, "category_id": 0, "iscrowd": 0} for b in boxes_a]
    annotations.append({"bbox": [60.0, 20.0, 80.0, 40.0], "category_id": 1, "iscrowd": 0})
    dicts = [
        {
            "file_name": "tiny.jpg",
            "height": 50,
            "width": 100,
            "image_id": 5,
            "annotations": annotations,
        }
    ]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(
        thing_classes=["a", "b"], thing_dataset_id_to_contiguous_id={7: 0, 3: 1}
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


# Detections of class "a" (best first) and their IoU with the boxes A, B, C of class "a":
#   d1 0.9 [0, 0, 10, 8.2]  IoU(A) 0.82      d2 0.8 [60, 0, 70, 10]  no overlap
#   d3 0.7 [20, 0, 26.2, 10] IoU(B) 0.62     d4 0.6 [0.3, 0, 10, 10] IoU(A) 0.97
# and one exact detection of the class "b" box.
TINY_DETECTIONS = [
    ([0.0, 0.0, 10.0, 8.2], 0.9, 0),
    ([60.0, 0.0, 70.0, 10.0], 0.8, 0),
    ([20.0, 0.0, 26.2, 10.0], 0.7, 0),
    ([0.3, 0.0, 10.0, 10.0], 0.6, 0),
    ([60.0, 20.0, 80.0, 40.0], 0.5, 1),
]
# Class "a", 3 ground truth boxes, per IoU threshold t (TP / FP in score order):
#   t = 0.50, 0.55, 0.60:       TP FP TP FP  (d4 duplicates A)  recall 1/3 1/3 2/3 2/3,
#       precision 1 1/2 2/3 1/2: recall points 0..0.33 (34) at 1, 0.34..0.66 (33) at 2/3, the
#       other 34 unreached: (34 + 33 * 2/3) / 101 = 56 / 101
#   t = 0.65, 0.70, 0.75, 0.80: TP FP FP FP  34 points at 1: 34 / 101
#   t = 0.85, 0.90, 0.95:       FP FP FP TP  (d1 too loose, d4 takes A) recall 1/3 at
#       precision 1/4: 34 points at 1/4: 8.5 / 101
# Class "b": AP 1 at every threshold. Every box is small (area < 32^2): APs = AP; APm, APl have
# no ground truth (NaN).
AP_A = (3 * 56 + 4 * 34 + 3 * 8.5) / 101 / 10
AP50_A, AP75_A = 56 / 101, 34 / 101
TINY_EXPECTED = {
    "AP": 100 * (AP_A + 1) / 2,
    "AP50": 100 * (AP50_A + 1) / 2,
    "AP75": 100 * (AP75_A + 1) / 2,
    "APs": 100 * (AP_A + 1) / 2,
    "APm": float("nan"),
    "APl": float("nan"),
    "AP-a": 100 * AP_A,
    "AP-b": 100.0,
}


def test_hand_computed_ap_on_a_tiny_case(tiny_dataset, tmp_path):
    evaluator = COCOEvaluator(tiny_dataset, distributed=False, output_dir=str(tmp_path))
    boxes, scores, classes = zip(*TINY_DETECTIONS)
    inst = Instances(
        (50, 100),
        pred_boxes=Boxes(torch.tensor(boxes)),
        scores=torch.tensor(scores),
        pred_classes=torch.tensor(classes),
    )
    evaluator.process([{"image_id": 5}], [{"instances": inst}])
    results = evaluator.evaluate()["bbox"]
    assert_same_metrics(results, TINY_EXPECTED)
    with open(tmp_path / "coco_instances_results.json") as f:
        written = json.load(f)
    assert [d["category_id"] for d in written] == [7, 7, 7, 7, 3]
    assert written[2]["bbox"] == pytest.approx([20.0, 0.0, 6.2, 10.0])


def test_independent_ap_reproduces_the_hand_computation():
    """The AP written above, on the same tiny case (so that it can be trusted on bigger ones)."""
    boxes_a = [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 10.0, 10.0], [40.0, 0.0, 10.0, 10.0]]
    annotations = [
        {"image_id": 5, "category_id": 7, "bbox": b, "area": 100.0, "iscrowd": 0} for b in boxes_a
    ]
    annotations.append(
        {"image_id": 5, "category_id": 3, "bbox": [60.0, 20.0, 20.0, 20.0], "area": 400.0}
    )
    gt_json = {
        "images": [{"id": 5, "height": 50, "width": 100}],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "a"}, {"id": 3, "name": "b"}],
    }
    detections = [
        {"image_id": 5, "category_id": 7 if c == 0 else 3, "score": s,
         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
        for b, s, c in TINY_DETECTIONS
    ]  # fmt: skip
    assert_same_metrics(independent_coco_ap(gt_json, detections), TINY_EXPECTED)


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


def _head_cost(gflops: float) -> GateCost:
    """A head cost whose ``used`` MACs are ``gflops`` GFLOPs (MACs / 2**30)."""
    used = torch.tensor(gflops * 2**30)
    return GateCost(soft=used, used=used, full=used * 2)


class _FakeDetector(nn.Module):
    """Returns stored predictions for each input image, with a 'head_cost' of image_id GFLOPs."""

    def __init__(self, predictions: dict[int, Instances], with_cost: bool = True) -> None:
        super().__init__()
        self.predictions = predictions
        self.with_cost = with_cost
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, batched_inputs):
        self.seen.append((self.training, torch.is_grad_enabled()))
        outputs = []
        for item in batched_inputs:
            inst = self.predictions[item["image_id"]]
            assert (item["height"], item["width"]) == inst.image_size
            output = {"instances": inst}
            if self.with_cost:
                output["head_cost"] = _head_cost(float(item["image_id"]))
            outputs.append(output)
        return outputs


def test_inference_on_dataset_with_fake_model(cfg, tmp_path):
    loader = build_test_loader(cfg, "shapes_val")
    dicts = DatasetCatalog.get("shapes_val")
    model = _FakeDetector(_perturbed_predictions(dicts))
    model.train()
    coco = COCOEvaluator("shapes_val", cfg, output_dir=str(tmp_path / "out"))
    complexity = HeadComplexityEvaluator()
    complexity.process([{}], [{"head_cost": _head_cost(99.0)}])  # stale value: must be reset
    results = inference_on_dataset(model, loader, DatasetEvaluators([coco, complexity]))

    assert model.training  # mode restored
    assert model.seen and all(not training and not grad for training, grad in model.seen)
    assert len(model.seen) == len(dicts)
    ids = [float(d["image_id"]) for d in dicts]
    assert results["head_complexity"] == {
        "avg_gflops": pytest.approx(sum(ids) / len(ids)),
        "min_gflops": min(ids),
        "max_gflops": max(ids),
        "num_images": len(ids),
        "avg_full_gflops": pytest.approx(2 * sum(ids) / len(ids)),  # full = 2 x used
        "used_fraction": pytest.approx(0.5),
    }
    with open(coco.metadata.json_file) as f:
        gt_json = json.load(f)
    detections = coco_detections(model.predictions, [c["id"] for c in gt_json["categories"]])
    assert_same_metrics(results["bbox"], independent_coco_ap(gt_json, detections))

    text = print_csv_format(results)
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in text
    assert "AP-circle" not in text
    assert "avg_gflops" in text


def test_inference_on_dataset_unwraps_the_model(cfg):
    loader = build_test_loader(cfg, "shapes_val")
    dicts = DatasetCatalog.get("shapes_val")
    inner = _FakeDetector(_perturbed_predictions(dicts))
    results = inference_on_dataset(nn.DataParallel(inner), loader, HeadComplexityEvaluator())
    assert results["head_complexity"]["num_images"] == len(dicts)

    inner.with_cost = False  # a static head: no "head_cost" in the outputs
    evaluators = DatasetEvaluators([COCOEvaluator("shapes_val", cfg), HeadComplexityEvaluator()])
    results = inference_on_dataset(nn.DataParallel(inner), loader, evaluators)
    assert set(results) == {"bbox"}
