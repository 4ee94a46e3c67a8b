"""A small FCOS with the dynamic head learns on the shapes data: ~100 iterations on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PLAYGROUND

from cvpods.engine import launcher

TRAIN_SIZE = "[('ResizeShortestEdge', {'short_edge_length': (128,), 'max_size': 192, 'sample_style': 'choice'})]"
TEST_SIZE = "[('ResizeShortestEdge', {'short_edge_length': 128, 'max_size': 192, 'sample_style': 'choice'})]"


@pytest.mark.slow
def test_loss_falls_and_evaluation_returns_ap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "experiment"
    shutil.copytree(
        PLAYGROUND / "shapes.res18.dynamic.d4.lambda-0_1",
        folder,
        ignore=shutil.ignore_patterns("log*"),
    )
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.chdir(folder)
    overrides = {
        "DATASETS.SHAPES": "{'NUM_TRAIN': 48, 'NUM_VAL': 8, 'MIN_SIZE': 128, 'MAX_SIZE': 160, 'SEED': 3}",
        "INPUT.AUG.TRAIN_PIPELINES": TRAIN_SIZE,
        "INPUT.AUG.TEST_PIPELINES": TEST_SIZE,
        "SOLVER.IMS_PER_BATCH": "4",
        "SOLVER.MAX_ITER": "100",
        "SOLVER.STEPS": "(80,)",
        "SOLVER.WARMUP_ITERS": "20",
        "SOLVER.CHECKPOINT_PERIOD": "1000",
        "DATALOADER.NUM_WORKERS": "0",
    }
    launcher.train_main([item for pair in overrides.items() for item in pair])

    out = folder / "log"
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert len(losses) >= 4, records
    assert losses[-1] < 0.7 * losses[0], f"total loss did not fall: {losses}"
    results = json.loads((out / "inference" / "shapes_val" / "results.json").read_text())
    # Floors with margin: this schedule measured AP 19.3, AP50 39.4 with SGD and AP 20.3, AP50 52.6
    # with the shapes experiments' AdamW (one run each; runs are not bit-identical). A broken
    # model, target assignment or evaluation stays near 0.
    assert results["bbox"]["AP"] >= 8.0, results["bbox"]
    assert results["bbox"]["AP50"] >= 20.0, results["bbox"]
    complexity = results["head_complexity"]
    assert complexity["min_gflops"] <= complexity["avg_gflops"] <= complexity["max_gflops"]
    assert results["head_complexity"]["num_images"] == 8
