"""Issue 13, item 3: wrong weights are an error, not AP 0.

The fake experiment's model has 6 tensors (conv, norm, head: weight + bias each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_engine_support import (  # noqa: F401 - autouse fixtures
    one_torch_thread,
    write_fake_experiment,
)
from test_robustness_support import load_demo, write_tiny_fcos_experiment

from cvpods.checkpoint import (
    DetectionCheckpointer,
    NotACheckpointError,
    WeightsMismatchError,
    load_into_model,
)
from cvpods.engine import launcher as launcher_module


@pytest.fixture
def experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = write_fake_experiment(tmp_path / "exp")
    monkeypatch.chdir(folder)
    return folder


def _tiny_net_state(experiment: Path) -> dict[str, torch.Tensor]:
    cfg, build_model = launcher_module.load_experiment(str(experiment))
    return build_model(cfg).state_dict()


def _other_architecture(state: dict[str, torch.Tensor], keep: tuple[str, ...]) -> dict:
    """Only the tensors ``keep`` of ``state``, plus many tensors the model does not have."""
    other = {k: v.clone() for k, v in state.items() if k.startswith(keep)}
    other.update({f"backbone.layer{i}.weight": torch.randn(4, 4) for i in range(20)})
    other["head.weight"] = torch.randn(7, 8)  # same name, another shape
    return {"model": other}


def test_cvpods_test_refuses_weights_of_another_architecture(
    experiment: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.save(_other_architecture(_tiny_net_state(experiment), ("conv.",)), "other_arch.pth")
    with pytest.raises(SystemExit) as info:
        launcher_module.test_main(["MODEL.WEIGHTS", "other_arch.pth"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "other_arch.pth does not fit this model: only 2 of 6 model tensors (33%)" in err
    assert "MODEL.WEIGHTS_MIN_MATCHED_FRACTION" in err
    # The table of what matched, per module.
    assert "| module" in err and "| conv " in err and "| head " in err
    assert "20 tensor(s) of the file match no model tensor" in err
    assert not list(experiment.glob("log/eval/*/inference/*/results.json"))


def test_the_threshold_is_a_config_key(experiment: Path, capsys: pytest.CaptureFixture) -> None:
    # 4 of 6 tensors (conv and norm) is enough by default (> 50%) ...
    torch.save(_other_architecture(_tiny_net_state(experiment), ("conv.", "norm.")), "most.pth")
    launcher_module.test_main(["MODEL.WEIGHTS", "most.pth"])
    assert (experiment / "log/eval/most/inference/fake_val/results.json").is_file()
    # ... but not when the config asks for 90%.
    with pytest.raises(SystemExit):
        launcher_module.test_main(
            ["MODEL.WEIGHTS", "most.pth", "MODEL.WEIGHTS_MIN_MATCHED_FRACTION", "0.9"]
        )
    assert "only 4 of 6 model tensors (67%)" in capsys.readouterr().err


def test_training_from_backbone_only_weights_is_allowed_and_reported(experiment: Path) -> None:
    state = _tiny_net_state(experiment)
    torch.save({k: v for k, v in state.items() if k.startswith("conv.")}, "backbone.pth")
    launcher_module.train_main(["MODEL.WEIGHTS", "backbone.pth", "SOLVER.MAX_ITER", "2"])
    log = (experiment / "log" / "log.txt").read_text()
    assert "Loaded 2 of 6 model tensors from backbone.pth" in log
    assert "What backbone.pth filled, per module" in log
    assert (experiment / "log" / "model_final.pth").is_file()


def test_module_table_counts_loaded_missing_and_mismatched() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    report = load_into_model(model, {"0.weight": torch.zeros(3, 2), "1.weight": torch.zeros(2, 2)})
    assert report.matched_fraction == pytest.approx(0.25)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in report.module_table().splitlines()
        if line.startswith("| ") and "module" not in line
    }
    assert rows["0"] == ["2", "1", "1", "0"]
    assert rows["1"] == ["2", "0", "1", "1"]
    assert rows["total"] == ["4", "1", "2", "1"]


def test_demo_refuses_weights_of_another_architecture(tmp_path: Path) -> None:
    demo = load_demo()
    folder = write_tiny_fcos_experiment(tmp_path / "tiny")
    fake = write_fake_experiment(tmp_path / "fake")
    torch.save({"model": _tiny_net_state(fake)}, tmp_path / "tiny_net.pth")
    image = tmp_path / "in.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(SystemExit) as info:
        demo.main(
            ["--config", str(folder), "--input", str(image), "--output", str(tmp_path / "out")]
            + ["MODEL.WEIGHTS", str(tmp_path / "tiny_net.pth")]
        )
    assert "does not fit this model: only 0 of" in str(info.value.code)
    assert not (tmp_path / "out" / "in.png").exists()


# ------------------------------------------------------------------ files that are no checkpoint
@pytest.mark.parametrize(
    ("content", "looks_like"),
    [
        (b"hello world\n", "a text file starting with 'hello world'"),
        (b"", "an empty file"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "an HTML/XML page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "a Git LFS pointer"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image"),
        (b'{"model": "resnet"}', "a JSON (text) file"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_says_so(
    tmp_path: Path, content: bytes, looks_like: str
) -> None:
    for name in ("weights.pth", "weights.pkl"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(NotACheckpointError) as info:
            DetectionCheckpointer(torch.nn.Linear(2, 2)).load(str(path))
        message = str(info.value)
        assert message.startswith(f"{path} is not a checkpoint"), message
        assert looks_like in message


def test_cvpods_test_names_a_non_checkpoint_file(
    experiment: Path, capsys: pytest.CaptureFixture
) -> None:
    (experiment / "notes.pth").write_text("hello world\n")
    with pytest.raises(SystemExit) as info:
        launcher_module.test_main(["MODEL.WEIGHTS", "notes.pth"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cvpods_test: error: {experiment / 'notes.pth'} is not a checkpoint: it is neither a "
        "torch.save file (zip archive or legacy pickle) nor a weights pickle; it looks like a "
        "text file starting with 'hello world'"
    )


def test_a_whole_checkpoint_of_another_run_still_loads(experiment: Path) -> None:
    """The check only refuses what does not fit: the run's own checkpoint loads fully."""
    launcher_module.train_main(["SOLVER.MAX_ITER", "2"])
    launcher_module.test_main([])
    results = json.loads((experiment / "log/inference/fake_val/results.json").read_text())
    assert results["bbox"]["AP"] > 0
    with pytest.raises(WeightsMismatchError):
        checkpointer = DetectionCheckpointer(torch.nn.Linear(3, 3))
        checkpointer.load(str(experiment / "log/model_final.pth"), min_matched_fraction=0.5)
