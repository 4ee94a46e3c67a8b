"""cvpods_train then cvpods_test with the real pieces: a thin dynamic-head FCOS on tiny shapes.

Checks the plumbing (data, model, trainer, checkpoints, evaluation, results files), not accuracy:
6 iterations on 96-pixel images.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
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
                    FCOS=dict(NUM_CLASSES=7, NUM_CONVS=4, BUDGET_LOSS_LAMBDA=0.1),
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


@pytest.mark.slow
def test_train_then_test_a_dynamic_fcos_on_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    assert "AP" in trained["bbox"] and "AP50" in trained["bbox"]
    assert "head_complexity" in trained
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("complexity_ratio" in r for r in records)
    assert any("shapes_val/bbox/AP" in r for r in records)

    results_path.unlink()
    launcher.test_main([])
    tested = json.loads(results_path.read_text())
    assert tested["bbox"] == pytest.approx(trained["bbox"], nan_ok=True)


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
