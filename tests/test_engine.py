"""Events, writers, logging, the training loop, checkpoints and in-process resumption.

Uses the fake experiment of test_engine_support (a GroupNorm conv net on random 16x16 images);
nothing here depends on the detector.
"""

from __future__ import annotations

import io
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine_support import (  # noqa: F401 - autouse fixtures
    one_torch_thread,
    write_fake_experiment,
)

from cvpods.configs import BaseConfig
from cvpods.engine import HookBase, SimpleTrainer, default_setup
from cvpods.engine.defaults import CONFIG_DUMP_FILE
from cvpods.engine.launcher import load_experiment_with_trainer, prepare_config
from cvpods.utils.env import get_rng_state, preserve_rng_state, seed_all_rng, set_rng_state
from cvpods.utils.events import EventStorage, JSONWriter, get_event_storage
from cvpods.utils.logger import log_first_n, setup_logger


# ------------------------------------------------------------------------------------- events
def test_event_storage_history_and_context() -> None:
    with pytest.raises(RuntimeError, match="outside an EventStorage"):
        get_event_storage()
    with EventStorage(start_iter=5) as storage:
        assert get_event_storage() is storage
        for value in [1.0, 2.0, 10.0, 3.0]:
            storage.put_scalar("loss", value)
            storage.step()
        storage.put_scalars(lr=0.1, smoothing_hint=False)
        storage.put_scalar("t", torch.tensor(2.5))
        assert storage.iter == 9
        history = storage.history("loss")
        assert history.latest() == 3.0
        assert history.median(3) == 3.0
        assert history.avg(2) == pytest.approx(6.5)
        assert history.global_avg() == pytest.approx(4.0)
        assert [it for _, it in history.values()] == [5, 6, 7, 8]
        assert storage.latest()["lr"] == (0.1, 9)
        smoothed = storage.latest_with_smoothing_hint(window_size=3)
        assert smoothed["loss"] == (3.0, 8) and smoothed["lr"] == (0.1, 9)
        with pytest.raises(KeyError, match="no scalar named 'nope'"):
            storage.history("nope")
        with EventStorage() as inner:
            assert get_event_storage() is inner
        assert get_event_storage() is storage
    with pytest.raises(RuntimeError):
        get_event_storage()


def test_json_writer_lines_and_resume_truncation(tmp_path: Path) -> None:
    path = tmp_path / "out" / "metrics.json"
    with EventStorage() as storage:
        writer = JSONWriter(str(path), window_size=2)
        for iteration in range(4):
            storage.iter = iteration
            storage.put_scalar("loss", float(iteration))
            storage.put_scalar("lr", 0.1, smoothing_hint=False)
            if iteration % 2 == 1:
                writer.write()
        writer.write()  # nothing new: no duplicate line
        storage.put_scalar("bbox/AP", 42.0, smoothing_hint=False)  # same iteration, new name
        writer.write()
        writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 3, 3]
    assert records[0] == {"iteration": 1, "loss": 0.5, "lr": 0.1}
    assert records[1]["loss"] == 2.5  # median of the last 2 values
    assert records[2] == {"iteration": 3, "bbox/AP": 42.0}
    # A resumed run starting at iteration 2 drops the lines of iterations >= 2.
    JSONWriter(str(path), start_iter=2).close()
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1]


# ------------------------------------------------------------------------------ logging, env
def test_setup_logger_writes_rank_files_and_log_first_n(tmp_path: Path) -> None:
    logger = setup_logger(str(tmp_path), distributed_rank=0, name="cvpods_test_logger")
    setup_logger(str(tmp_path), distributed_rank=0, name="cvpods_test_logger")  # no duplicates
    logging.getLogger("cvpods_test_logger.sub").info("hello %d", 1)
    for _ in range(3):
        log_first_n(logging.INFO, "only twice", n=2, name="cvpods_test_logger")
    for handler in logger.handlers:
        handler.flush()
    text = (tmp_path / "log.txt").read_text()
    assert text.count("hello 1") == 1
    assert text.count("only twice") == 2
    setup_logger(str(tmp_path), distributed_rank=3, name="cvpods_test_logger")
    logging.getLogger("cvpods_test_logger").info("from rank three")
    assert "from rank three" in (tmp_path / "log.txt.rank3").read_text()
    assert "from rank three" not in (tmp_path / "log.txt").read_text()


def test_rng_state_survives_weights_only_checkpoint() -> None:
    seed_all_rng(11)
    state = get_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    buffer = io.BytesIO()
    torch.save({"rng": [state]}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)["rng"][0]
    set_rng_state(restored)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    with preserve_rng_state():
        torch.rand(100)
        np.random.rand(100)
    after = float(torch.rand(1))
    set_rng_state(restored)
    random.random(), np.random.rand(), torch.rand(1)
    assert float(torch.rand(1)) == after


# ------------------------------------------------------------------------------ training loop
def _fake(tmp_path: Path, *overrides: str, name: str = "exp") -> tuple:
    """(cfg, build_model, Trainer) of a fresh fake experiment in tmp_path/name."""
    folder = write_fake_experiment(tmp_path / name)
    cfg, build_model, trainer_class = load_experiment_with_trainer(str(folder))
    prepare_config(cfg, str(folder), list(overrides))
    return cfg, build_model, trainer_class


def _run(cfg: BaseConfig, build_model, trainer_class, *, resume: bool = False, hooks=()):
    default_setup(cfg)
    trainer = trainer_class(cfg, build_model)
    trainer.register_hooks(hooks)
    trainer.resume_or_load(resume=resume)
    return trainer, trainer.train()


def test_non_finite_loss_names_the_loss_and_iteration(tmp_path: Path) -> None:
    cfg, build_model, trainer_class = _fake(tmp_path, "MODEL.FAKE.NAN_AT", "5")
    with pytest.raises(FloatingPointError, match=r"iteration 5: loss_l1=nan"):
        _run(cfg, build_model, trainer_class)


def test_simple_trainer_amp_needs_cuda() -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="AMP.ENABLED=True needs the model on a CUDA device"):
        SimpleTrainer(model, [], optimizer, amp=True)


def test_train_writes_checkpoints_metrics_and_results(tmp_path: Path) -> None:
    cfg, build_model, trainer_class = _fake(
        tmp_path, "SOLVER.CHECKPOINT_MAX_KEEP", "2", "TEST.EVAL_PERIOD", "6"
    )
    trainer, results = _run(cfg, build_model, trainer_class)
    out = Path(cfg.OUTPUT_DIR)
    assert out == tmp_path / "exp" / "log"
    # period 4 over 12 iterations: 3, 7, 11 (only the last 2 kept) and the final model.
    files = sorted(p.name for p in out.glob("*.pth"))
    assert files == ["model_0000007.pth", "model_0000011.pth", "model_final.pth"]
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "iteration", "rng"} <= set(final)
    assert final["iteration"] == 11
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(final["model"][name], value)

    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    train_records = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in train_records] == [11]  # written every 20 and at the end
    for key in ("loss_l2", "loss_l1", "lr", "time", "data_time", "complexity_ratio"):
        assert key in train_records[0], key
    eval_records = [r for r in records if "fake_val/bbox/AP" in r]
    assert [r["iteration"] for r in eval_records] == [5, 11]  # period 6 and the end
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("total_loss", "loss_l2", "lr", "time", "data_time", "complexity_ratio"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("fake_val/bbox/AP")] == [5, 11]

    assert set(results) == {"fake_val"}
    written = json.loads((out / "inference" / "fake_val" / "results.json").read_text())
    assert written == results["fake_val"]
    log = (out / "log.txt").read_text()
    assert "eta:" in log and "iter: 11" in log and "lr:" in log

    dump = (out / CONFIG_DUMP_FILE).read_text()
    assert "#   SOLVER.CHECKPOINT_MAX_KEEP: 0 -> 2" in dump
    reloaded = BaseConfig.load_dump(dump)
    assert reloaded.SOLVER.CHECKPOINT_MAX_KEEP == 2 and reloaded.MODEL.FAKE.RANDOM is True


class _Interrupt(HookBase):
    """Raise before iteration ``at`` runs (a crash of the training process)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_step(self) -> None:
        if self.trainer.iter == self.at:
            raise RuntimeError(f"interrupted at {self.at}")


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """A run stopped after iteration 9 and resumed from its iteration-7 checkpoint ends with the
    same weights as an uninterrupted run (model, optimizer, scheduler, iteration and the Python,
    NumPy and torch generators all have to be restored for this)."""
    cfg, build_model, trainer_class = _fake(tmp_path, name="uninterrupted")
    _run(cfg, build_model, trainer_class)
    expected = torch.load(Path(cfg.OUTPUT_DIR) / "model_final.pth", weights_only=True)

    cfg, build_model, trainer_class = _fake(tmp_path, name="interrupted")
    with pytest.raises(RuntimeError, match="interrupted at 9"):
        _run(cfg, build_model, trainer_class, hooks=[_Interrupt(9)])
    out = Path(cfg.OUTPUT_DIR)
    assert (out / "last_checkpoint").read_text().strip() == "model_0000007.pth"
    assert not (out / "model_final.pth").exists()

    cfg, build_model, trainer_class = _fake(tmp_path, name="interrupted")
    trainer, _ = _run(cfg, build_model, trainer_class, resume=True)
    assert trainer.start_iter == 8
    resumed = torch.load(out / "model_final.pth", weights_only=True)
    for name, value in expected["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    assert resumed["scheduler"]["last_epoch"] == expected["scheduler"]["last_epoch"]
    iterations = [
        json.loads(line)["iteration"]
        for line in (out / "metrics.json").read_text().splitlines()
        if "total_loss" in line
    ]
    assert iterations == sorted(set(iterations))


def test_resume_without_checkpoint_loads_weights_and_starts_at_zero(tmp_path: Path) -> None:
    cfg, build_model, trainer_class = _fake(tmp_path, "SOLVER.MAX_ITER", "4", name="first")
    first, _ = _run(cfg, build_model, trainer_class)
    weights = Path(cfg.OUTPUT_DIR) / "model_final.pth"

    cfg, build_model, trainer_class = _fake(
        tmp_path, "MODEL.WEIGHTS", str(weights), "SOLVER.MAX_ITER", "4", name="second"
    )
    default_setup(cfg)
    trainer = trainer_class(cfg, build_model)
    trainer.resume_or_load(resume=True)  # nothing in OUTPUT_DIR: load MODEL.WEIGHTS only
    assert trainer.start_iter == 0
    for name, value in first.model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value)
    assert not trainer.optimizer.state  # the optimizer was not restored


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
