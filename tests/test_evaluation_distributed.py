"""Evaluation in two gloo processes: each sees half of the data, rank 0 gets the full metrics."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cvpods.configs import FCOSConfig
from cvpods.data import DatasetCatalog, build_test_loader, register_shapes_from_config
from cvpods.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    HeadComplexityEvaluator,
    inference_on_dataset,
)
from cvpods.layers import GateCost
from cvpods.structures import Boxes, Instances


def _config() -> FCOSConfig:
    cfg = FCOSConfig()
    cfg.DATASETS.SHAPES.update(NUM_TRAIN=4, NUM_VAL=9, MIN_SIZE=64, MAX_SIZE=80, SEED=3)
    cfg.INPUT.AUG.TEST_PIPELINES = []
    cfg.DATALOADER.NUM_WORKERS = 0
    register_shapes_from_config(cfg)  # the data layer registers datasets, not the evaluator
    return cfg


class _GroundTruthDetector(nn.Module):
    """Predicts each image's (shifted) ground-truth boxes; 'costs' image_id GFLOPs per image."""

    def __init__(self, dataset_dicts: list[dict]) -> None:
        super().__init__()
        self.dicts = {d["image_id"]: d for d in dataset_dicts}
        self.seen: list[int] = []

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        outputs = []
        for item in batched_inputs:
            d = self.dicts[item["image_id"]]
            self.seen.append(item["image_id"])
            boxes = torch.tensor([a["bbox"] for a in d["annotations"]]).reshape(-1, 4) + 1.0
            n = len(boxes)
            inst = Instances(
                (d["height"], d["width"]),
                pred_boxes=Boxes(boxes),
                scores=torch.linspace(1.0, 0.5, n),
                pred_classes=torch.tensor([a["category_id"] for a in d["annotations"]]).long(),
            )
            used = torch.tensor(float(item["image_id"]) * 2**30)
            outputs.append({"instances": inst, "head_cost": GateCost(used, used, used * 2)})
        return outputs


def _evaluate() -> tuple[dict, list[int]]:
    cfg = _config()
    model = _GroundTruthDetector(DatasetCatalog.get("shapes_val"))
    evaluator = DatasetEvaluators([COCOEvaluator("shapes_val", cfg), HeadComplexityEvaluator()])
    results = inference_on_dataset(model, build_test_loader(cfg, "shapes_val"), evaluator)
    return results, model.seen


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        results, seen = _evaluate()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"results": results, "seen": seen}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "data"))
    single, seen = _evaluate()  # also generates the data before the workers start
    assert len(seen) == 9
    mp.start_processes(
        _worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    ranks = []
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as f:
            ranks.append(json.load(f))
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == sorted(seen)
    assert len(ranks[0]["seen"]) == 5 and len(ranks[1]["seen"]) == 4
    assert ranks[0]["results"]["bbox"] == pytest.approx(single["bbox"], nan_ok=True)
    assert "bbox" not in ranks[1]["results"]
    for rank in ranks:  # the head complexity summary covers both processes' images
        assert rank["results"]["head_complexity"] == pytest.approx(single["head_complexity"])
