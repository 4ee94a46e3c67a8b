"""The cvpods_train / cvpods_test launchers: arguments, experiment loading, weights discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_engine_support import (  # noqa: F401 - autouse fixtures
    one_torch_thread,
    write_fake_experiment,
)

from cvpods.engine import default_argument_parser
from cvpods.engine import launcher as launcher_module
from cvpods.engine.launcher import (
    ExperimentError,
    find_weights_to_test,
    load_experiment,
    load_experiment_with_trainer,
    prepare_config,
)


# ----------------------------------------------------------------------------------- parsing
def _parse(*argv: str):
    return default_argument_parser().parse_intermixed_args(list(argv))


def test_parse_defaults() -> None:
    args = _parse()
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (1, 1, 0)
    assert args.dist_url == "auto" and not args.resume and not args.eval_only
    assert args.opts == []


def test_parse_num_gpus_alias_overrides_and_resume() -> None:
    assert _parse("--num-gpus", "2").num_gpus == 2
    assert _parse("--gpu-nums", "3").num_gpus == 3
    args = _parse(
        "--gpu-nums",
        "4",
        "--num-machines",
        "2",
        "--machine-rank",
        "1",
        "--dist-url",
        "tcp://10.0.0.1:1234",
        "SOLVER.BASE_LR",
        "0.02",
        "DATASETS.TEST",
        "('a', 'b')",
        "--resume",
        "SOLVER.STEPS",
        "(-1,)",
    )
    assert args.num_gpus == 4 and args.num_machines == 2 and args.machine_rank == 1
    assert args.dist_url == "tcp://10.0.0.1:1234"
    assert args.resume  # options may follow the overrides
    assert args.opts == ["SOLVER.BASE_LR", "0.02", "DATASETS.TEST", "('a', 'b')"] + [
        "SOLVER.STEPS",
        "(-1,)",
    ]


def test_odd_overrides_are_rejected(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        launcher_module._parse(["SOLVER.BASE_LR"], "cvpods_train", "")
    assert "KEY VALUE pairs" in capsys.readouterr().err


# ------------------------------------------------------------------------- experiment folder
def test_load_experiment_from_any_folder(tmp_path: Path) -> None:
    folder = write_fake_experiment(tmp_path / "somewhere" / "my_exp")
    cfg, build_model, trainer_class = load_experiment_with_trainer(str(folder))
    assert cfg.MODEL.FAKE.RANDOM is True
    assert trainer_class.__name__ == "Trainer"
    model = build_model(cfg)
    assert isinstance(model, torch.nn.Module)
    prepare_config(cfg, str(folder), ["SOLVER.MAX_ITER", "3"])
    assert cfg.SOLVER.MAX_ITER == 3
    assert cfg.OUTPUT_DIR == str(folder / "log")  # relative to the experiment folder
    # Loading twice gives independent configs.
    again, _ = load_experiment(str(folder))
    assert again.SOLVER.MAX_ITER == 12


def test_missing_or_incomplete_experiment_files(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match=r"config.py not found"):
        load_experiment(str(tmp_path))
    (tmp_path / "config.py").write_text("cfg = 1\n")
    with pytest.raises(ExperimentError, match="defines no `config`"):
        load_experiment(str(tmp_path))
    (tmp_path / "config.py").write_text("config = {'A': 1}\n")
    with pytest.raises(ExperimentError, match="expected an instance of a cvpods config"):
        load_experiment(str(tmp_path))
    (tmp_path / "config.py").write_text(
        "from cvpods.configs import BaseDetectionConfig\nconfig = BaseDetectionConfig()\n"
    )
    with pytest.raises(ExperimentError, match=r"net.py not found"):
        load_experiment(str(tmp_path))
    (tmp_path / "net.py").write_text("def build(cfg):\n    return None\n")
    with pytest.raises(ExperimentError, match="no function `build_model"):
        load_experiment(str(tmp_path))
    (tmp_path / "net.py").write_text("def build_model(cfg):\n    pass\nTrainer = object\n")
    with pytest.raises(ExperimentError, match="subclass of cvpods.engine.DefaultTrainer"):
        load_experiment(str(tmp_path))


def test_train_main_reports_a_bad_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        launcher_module.train_main([])
    assert info.value.code == 2
    assert "config.py not found" in capsys.readouterr().err
    write_fake_experiment(tmp_path)
    with pytest.raises(SystemExit):
        launcher_module.train_main(["SOLVER.MAX_ITR", "3"])
    assert "did you mean SOLVER.MAX_ITER" in capsys.readouterr().err


# ------------------------------------------------------------------------------ weights lookup
def test_find_weights_latest_checkpoint_given_and_missing(tmp_path: Path) -> None:
    folder = write_fake_experiment(tmp_path / "exp")
    cfg, _ = load_experiment(str(folder))
    prepare_config(cfg, str(folder), [])
    with pytest.raises(ExperimentError, match="nothing to evaluate") as info:
        find_weights_to_test(cfg, str(folder), [])
    assert "last_checkpoint" in str(info.value) and "MODEL.WEIGHTS" in str(info.value)

    out = Path(cfg.OUTPUT_DIR)
    out.mkdir()
    torch.save({"model": {}}, out / "model_0000003.pth")
    (out / "last_checkpoint").write_text("model_0000003.pth")
    assert find_weights_to_test(cfg, str(folder), []) == str(out / "model_0000003.pth")

    # MODEL.WEIGHTS on the command line wins; relative to the experiment folder.
    torch.save({"model": {}}, folder / "other.pth")
    assert find_weights_to_test(cfg, str(folder), ["MODEL.WEIGHTS", "other.pth"]) == str(
        folder / "other.pth"
    )
    with pytest.raises(ExperimentError, match="no such file"):
        find_weights_to_test(cfg, str(folder), ["MODEL.WEIGHTS", "missing.pth"])
    # A weights file set inside config.py (an ImageNet backbone, say) is not what is tested.
    cfg.MODEL.WEIGHTS = str(folder / "other.pth")
    assert find_weights_to_test(cfg, str(folder), []) == str(out / "model_0000003.pth")

    (out / "last_checkpoint").write_text("model_9999999.pth")
    with pytest.raises(ExperimentError, match="does not exist"):
        find_weights_to_test(cfg, str(folder), [])


def test_test_main_without_weights_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    write_fake_experiment(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        launcher_module.test_main([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cvpods_test: error: nothing to evaluate")


# ------------------------------------------------------------------------------ train -> test
def test_train_then_test_in_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_fake_experiment(tmp_path / "exp")
    monkeypatch.chdir(folder)
    launcher_module.train_main(["SOLVER.MAX_ITER", "6", "OUTPUT_DIR", "./out"])
    out = folder / "out"
    assert (out / "model_final.pth").is_file() and (out / "config_dump.py").is_file()
    results_path = out / "inference" / "fake_val" / "results.json"
    trained = json.loads(results_path.read_text())
    results_path.unlink()

    launcher_module.test_main(["OUTPUT_DIR", "./out"])
    tested = json.loads(results_path.read_text())
    assert tested == trained  # cvpods_test reproduces the metrics printed after training
    log = (out / "log.txt").read_text()
    assert "Final metrics:" in log and "fake_val" in log
    assert f"weights evaluated: {out / 'model_final.pth'}" in log

    # --resume of a finished run trains nothing more and evaluates again.
    results_path.unlink()
    launcher_module.train_main(["--resume", "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", "./out"])
    assert json.loads(results_path.read_text()) == trained


def test_eval_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = write_fake_experiment(tmp_path / "exp")
    monkeypatch.chdir(folder)
    with pytest.raises(SystemExit):
        launcher_module.train_main(["--eval-only"])
    assert "--eval-only needs --resume" in capsys.readouterr().err
    launcher_module.train_main(["SOLVER.MAX_ITER", "3"])
    out = folder / "log"
    trained = json.loads((out / "inference" / "fake_val" / "results.json").read_text())
    (out / "inference" / "fake_val" / "results.json").unlink()
    launcher_module.train_main(["--eval-only", "--resume", "SOLVER.MAX_ITER", "3"])
    assert json.loads((out / "inference" / "fake_val" / "results.json").read_text()) == trained
    assert [p.name for p in out.glob("*.pth")] == ["model_final.pth"]  # nothing trained
