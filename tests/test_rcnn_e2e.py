"""Faster R-CNN end to end with the real pieces, on tiny shapes data: the three shapes
experiments train 2 iterations and evaluate (cvpods_train); the dynamic-RPN one is then
evaluated again (cvpods_test), shown by the demo with its RPN gates, resumed after a crash to
the same weights, and trained by 2 gloo processes. Plumbing, not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import PLAYGROUND
from test_engine_support import one_torch_thread  # noqa: F401
from test_robustness_support import load_demo

from cvpods.engine import DefaultTrainer, HookBase, default_setup, launcher

EXPERIMENTS = [
    "shapes.res18.faster_rcnn",
    "shapes.res18.faster_rcnn.dynamic_rpn.d4.lambda-0_1",
    "shapes.res18.faster_rcnn.fix_rpn.d4",
]
DYNAMIC = EXPERIMENTS[1]

TINY = [
    "DATASETS.SHAPES.NUM_TRAIN", "8", "DATASETS.SHAPES.NUM_VAL", "2",
    "DATASETS.SHAPES.MIN_SIZE", "128", "DATASETS.SHAPES.MAX_SIZE", "160",
    "INPUT.AUG.TRAIN_PIPELINES",
    "[('ResizeShortestEdge', dict(short_edge_length=(128,), max_size=160, sample_style='choice'))]",
    "INPUT.AUG.TEST_PIPELINES",
    "[('ResizeShortestEdge', dict(short_edge_length=128, max_size=160, sample_style='choice'))]",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]  # fmt: skip


def _train(folder: Path, output: Path, extra: list[str] = ()) -> dict:
    launcher.train_main([*extra, "OUTPUT_DIR", str(output), *TINY])
    assert (output / "model_final.pth").is_file()
    return json.loads((output / "inference" / "shapes_val" / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_shapes_experiment_trains_and_evaluates(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "datasets"))
    folder = PLAYGROUND / name
    monkeypatch.chdir(folder)
    results = _train(folder, tmp_path / "log")
    assert "AP" in results["bbox"]
    if name == DYNAMIC:
        complexity = results["head_complexity"]
        assert complexity["num_images"] == 2
        assert 0 < complexity["min_gflops"] <= complexity["avg_gflops"] <= complexity["max_gflops"]
    else:
        assert "head_complexity" not in results
    records = [json.loads(x) for x in (tmp_path / "log" / "metrics.json").read_text().splitlines()]
    losses = {k for r in records for k in r if k.startswith("loss_")}
    expected = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert expected <= losses
    assert ("loss_budget" in losses) == (name == DYNAMIC)


@pytest.mark.slow
def test_dynamic_rpn_test_demo_gates_and_gloo(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "datasets"))
    folder = PLAYGROUND / DYNAMIC
    monkeypatch.chdir(folder)
    output = tmp_path / "log"
    trained = _train(folder, output)

    results_path = output / "inference" / "shapes_val" / "results.json"
    results_path.unlink()
    launcher.test_main(["OUTPUT_DIR", str(output), *TINY])
    tested = json.loads(results_path.read_text())
    assert tested["bbox"] == pytest.approx(trained["bbox"], nan_ok=True)
    assert tested["head_complexity"] == pytest.approx(trained["head_complexity"])

    image = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image), rng.integers(0, 255, (140, 150, 3), dtype=np.uint8))
    demo_out = tmp_path / "demo"
    load_demo().main(
        ["--config", str(folder), "--input", str(image), "--output", str(demo_out)]
        + ["--show-gates", "--confidence-threshold", "0.0"]
        + ["MODEL.WEIGHTS", str(output / "model_final.pth"), *TINY]
    )
    written = sorted(p.name for p in demo_out.iterdir())
    assert "photo.png" in written and any("gates" in n for n in written), written

    gloo = tmp_path / "gloo"
    results = _train(folder, gloo, ["--num-gpus", "2"])
    assert results["head_complexity"]["num_images"] == 2


class _Crash(HookBase):
    def before_step(self) -> None:
        if self.trainer.iter == 2:
            raise RuntimeError("crash before iteration 2")


def _train_in_process(output: str, *, resume: bool, crash: bool) -> dict:
    cfg, build_model = launcher.load_experiment(str(PLAYGROUND / DYNAMIC))
    overrides = [*TINY, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", output, "DATASETS.TEST", "()"]
    launcher.prepare_config(cfg, str(PLAYGROUND / DYNAMIC), overrides)
    default_setup(cfg)
    trainer = DefaultTrainer(cfg, build_model)
    if crash:
        trainer.register_hooks([_Crash()])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return torch.load(Path(cfg.OUTPUT_DIR) / "model_final.pth", weights_only=True)


@pytest.mark.slow
def test_resumed_dynamic_rpn_equals_uninterrupted(tmp_path, monkeypatch):
    """Anchor and ROI sampling draw from the global generator: resuming restores it."""
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "datasets"))
    expected = _train_in_process(str(tmp_path / "straight"), resume=False, crash=False)
    with pytest.raises(RuntimeError, match="crash before iteration 2"):
        _train_in_process(str(tmp_path / "crashed"), resume=False, crash=True)
    resumed = _train_in_process(str(tmp_path / "crashed"), resume=True, crash=False)
    for name, value in expected["model"].items():
        assert torch.equal(resumed["model"][name], value), name
