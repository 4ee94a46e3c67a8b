"""cvpods_train then cvpods_test with the real pieces: a thin dynamic-head FCOS on tiny shapes.

Checks the plumbing (data, model, trainer, checkpoints, evaluation, results files), not accuracy:
6 iterations on 160-224 pixel images. The score threshold is 0 so that even this model writes
detections, and the reported metrics are checked against pycocotools run here on the written
detections file (the file writing and category ids, not pycocotools itself), the head's cost
against its full cost from tools/head_flops.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import load_tool
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_engine_support import one_torch_thread  # noqa: F401

from cvpods.engine import DefaultTrainer, HookBase, default_setup, launcher

CONFIG = """
from cvpods.configs import FCOSConfig


class TinyShapesConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        size = dict(short_edge_length=(160,), max_size=224, sample_style="choice")
        test_size = dict(short_edge_length=160, max_size=224, sample_style="choice")
        self._register_configuration(
            dict(
                MODEL=dict(
                    DEVICE="cpu",
                    # ResNet-18 with GroupNorm, trained from scratch.
                    PIXEL_STD=[57.375, 57.120, 58.395],
                    BACKBONE=dict(FREEZE_AT=0),
                    RESNETS=dict(
                        DEPTH=18,
                        NORM="GN",
                        WIDTH_PER_GROUP=64,
                        RES2_OUT_CHANNELS=64,
                        STEM_OUT_CHANNELS=32,
                    ),
                    FPN=dict(OUT_CHANNELS=32),
                    FCOS=dict(
                        NUM_CLASSES=7, NUM_CONVS=4, BUDGET_LOSS_LAMBDA=0.1, SCORE_THRESH_TEST=0.0
                    ),
                ),
                DATASETS=dict(
                    TRAIN=("shapes_train",),
                    TEST=("shapes_val",),
                    SHAPES=dict(NUM_TRAIN=12, NUM_VAL=4, MIN_SIZE=160, MAX_SIZE=224, SEED=0),
                ),
                INPUT=dict(
                    AUG=dict(
                        TRAIN_PIPELINES=[("ResizeShortestEdge", size), ("RandomFlip", dict())],
                        TEST_PIPELINES=[("ResizeShortestEdge", test_size)],
                    )
                ),
                DATALOADER=dict(NUM_WORKERS=0),
                SOLVER=dict(
                    IMS_PER_BATCH=2,
                    BASE_LR=0.005,
                    MAX_ITER=6,
                    STEPS=(4,),
                    WARMUP_ITERS=2,
                    CHECKPOINT_PERIOD=3,
                ),
                SEED=1,
            )
        )


config = TinyShapesConfig()
"""

NET = """
from cvpods.modeling import FCOS, FCOSDynamicHead


def build_model(cfg):
    return FCOS(cfg, head_cls=FCOSDynamicHead)
"""


REPO = Path(__file__).resolve().parents[1]
BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def pycocotools_metrics(gt_json: Path, detections_json: Path) -> dict[str, float | None]:
    """COCOeval on the files on disk: the metrics in percent, None where undefined."""
    detections = json.loads(detections_json.read_text())
    assert detections, f"{detections_json} holds no detection: the comparison would be vacuous"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        coco_eval = COCOeval(gt, gt.loadRes(detections), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {m: None if v < 0 else 100 * float(v) for m, v in zip(BOX_METRICS, coco_eval.stats)}


def assert_reported_metrics(bbox: dict, gt_json: Path, detections_json: Path) -> None:
    expected = pycocotools_metrics(gt_json, detections_json)
    for name, value in expected.items():
        if value is None:
            assert bbox[name] is None or math.isnan(bbox[name]), (name, bbox[name])
        else:
            assert bbox[name] == pytest.approx(value, abs=1e-9), name


def resized(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """The test-time ResizeShortestEdge size: short side ``short``, long side <= ``max_size``."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def full_head_gflops(folder: Path, size: tuple[int, int], capsys) -> float:
    """The head's cost with every position computed, from tools/head_flops.py (MACs / 2**30)."""
    tool = load_tool("head_flops")
    capsys.readouterr()
    tool.main([str(folder), "--size", str(size[0]), str(size[1])])
    macs = re.search(r"\(([0-9.e+]+) MACs\)", capsys.readouterr().out).group(1)
    return float(macs) / 2**30


def assert_head_cost_within_full(
    complexity: dict, folder: Path, gt_json: Path, short: int, max_size: int, capsys
) -> None:
    """min <= avg <= max, each image's cost at most its full cost (the sizes the test images
    are resized to, padded by the tool), so avg <= mean and max <= largest full cost."""
    images = json.loads(gt_json.read_text())["images"]
    assert complexity["num_images"] == len(images)
    full = {}
    for image in images:
        size = resized(image["height"], image["width"], short, max_size)
        if size not in full:
            full[size] = full_head_gflops(folder, size, capsys)
    per_image = [full[resized(i["height"], i["width"], short, max_size)] for i in images]
    tolerance = 1e-3  # the tool prints 4 significant digits
    assert 0 < complexity["min_gflops"] <= complexity["avg_gflops"] <= complexity["max_gflops"]
    assert complexity["max_gflops"] <= max(per_image) * (1 + tolerance)
    assert complexity["avg_gflops"] <= sum(per_image) / len(per_image) * (1 + tolerance)


@pytest.mark.slow
def test_train_then_test_a_dynamic_fcos_on_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "tiny_dynamic"
    folder.mkdir()
    (folder / "config.py").write_text(textwrap.dedent(CONFIG))
    (folder / "net.py").write_text(textwrap.dedent(NET))
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.chdir(folder)

    launcher.train_main([])
    out = folder / "log"
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    results_path = out / "inference" / "shapes_val" / "results.json"
    trained = json.loads(results_path.read_text())
    (gt_json,) = (tmp_path / "datasets" / "shapes").glob("val_n4_*/annotations.json")
    detections_json = results_path.with_name("coco_instances_results.json")
    assert_reported_metrics(trained["bbox"], gt_json, detections_json)
    assert_head_cost_within_full(
        trained["head_complexity"], folder, gt_json, short=160, max_size=224, capsys=capsys
    )
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("complexity_ratio" in r for r in records)
    assert any("shapes_val/bbox/AP" in r for r in records)

    results_path.unlink()
    detections_json.unlink()
    launcher.test_main([])
    tested = json.loads(results_path.read_text())
    assert tested["bbox"] == pytest.approx(trained["bbox"], nan_ok=True)
    assert_reported_metrics(tested["bbox"], gt_json, detections_json)


class _Crash(HookBase):
    def before_step(self) -> None:
        if self.trainer.iter == 4:
            raise RuntimeError("crash before iteration 4")


def _train_tiny(folder: Path, output: str, *, resume: bool, crash: bool) -> dict:
    cfg, build_model = launcher.load_experiment(str(folder))
    launcher.prepare_config(cfg, str(folder), ["OUTPUT_DIR", output, "DATASETS.TEST", "()"])
    default_setup(cfg)
    trainer = DefaultTrainer(cfg, build_model)
    if crash:
        trainer.register_hooks([_Crash()])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return torch.load(Path(cfg.OUTPUT_DIR) / "model_final.pth", weights_only=True)


@pytest.mark.slow
def test_resumed_dynamic_fcos_equals_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real loader (random resize and flip) and model: crash, resume, same weights."""
    folder = tmp_path / "tiny_dynamic"
    folder.mkdir()
    (folder / "config.py").write_text(textwrap.dedent(CONFIG))
    (folder / "net.py").write_text(textwrap.dedent(NET))
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path / "datasets"))

    expected = _train_tiny(folder, "./straight", resume=False, crash=False)
    with pytest.raises(RuntimeError, match="crash before iteration 4"):
        _train_tiny(folder, "./crashed", resume=False, crash=True)
    assert (folder / "crashed" / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    resumed = _train_tiny(folder, "./crashed", resume=True, crash=False)
    for name, value in expected["model"].items():
        assert torch.equal(resumed["model"][name], value), name
