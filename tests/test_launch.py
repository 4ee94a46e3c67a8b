"""End-to-end checks of resumption after a kill -9 and of multi-process (gloo) training.

Both use the fake experiment of test_engine_support, so they test the engine, not the detector.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_engine_support import (  # noqa: F401 - autouse fixtures
    one_torch_thread,
    write_fake_experiment,
)

from cvpods.engine import default_setup, launch
from cvpods.engine.distributed_launch import find_free_port
from cvpods.engine.launcher import load_experiment_with_trainer, prepare_config
from cvpods.utils import comm

REPO = Path(__file__).resolve().parents[1]


def test_launch_single_process_calls_directly() -> None:
    assert launch(max, 1, args=(3, 5)) == 5
    with pytest.raises(ValueError, match="at least one process"):
        launch(max, 0)
    with pytest.raises(ValueError, match="machine_rank"):
        launch(max, 1, num_machines=2, machine_rank=2)
    with pytest.raises(ValueError, match="only works on one machine"):
        launch(max, 1, num_machines=2, machine_rank=0, dist_url="auto")
    assert 0 < find_free_port() < 65536


# ------------------------------------------------------------------------------ kill -9, resume
def _train_command(*args: str) -> list[str]:
    code = "from cvpods.engine.launcher import train_main; train_main()"
    return [sys.executable, "-c", code, *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    folder = write_fake_experiment(tmp_path / "exp")
    common = ["SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "10", "SOLVER.STEPS", "(25,)"]

    # The run to be killed: slowed down so that the kill lands between two checkpoints.
    killed_dir = folder / "killed"
    process = subprocess.Popen(
        _train_command(*common, "MODEL.FAKE.SLEEP", "0.1", "OUTPUT_DIR", str(killed_dir)),
        cwd=folder,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while not (killed_dir / "model_0000019.pth").exists():
            assert process.poll() is None, "training exited before its second checkpoint"
            assert time.time() < deadline, "no checkpoint after 60 s"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_dir / "model_final.pth").exists(), "the kill came too late"

    resumed = subprocess.run(
        _train_command("--resume", *common, "OUTPUT_DIR", str(killed_dir)),
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming at iteration" in (killed_dir / "log.txt").read_text()

    reference_dir = folder / "reference"
    reference = subprocess.run(
        _train_command(*common, "OUTPUT_DIR", str(reference_dir)),
        cwd=folder,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]

    final = torch.load(killed_dir / "model_final.pth", weights_only=True)
    expected = torch.load(reference_dir / "model_final.pth", weights_only=True)
    assert final["iteration"] == expected["iteration"] == 39
    for name, value in expected["model"].items():
        assert torch.equal(final["model"][name], value), name
    for a, b in zip(final["optimizer"]["state"].values(), expected["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


# --------------------------------------------------------------------------- 2 processes, gloo
def _train_fake(folder: str, output_dir: str, overrides: list[str]) -> None:
    """Train the fake experiment in this process (one rank of a group, or alone)."""
    torch.set_num_threads(1)
    cfg, build_model, trainer_class = load_experiment_with_trainer(folder)
    prepare_config(cfg, folder, overrides + ["OUTPUT_DIR", output_dir])
    default_setup(cfg)
    trainer = trainer_class(cfg, build_model)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save(
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        os.path.join(output_dir, f"params_rank{comm.get_rank()}_of_{comm.get_world_size()}.pt"),
    )


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    folder = str(write_fake_experiment(tmp_path / "exp"))
    # No random augmentation / dropout (they would differ per process); no evaluation.
    overrides = ["MODEL.FAKE.RANDOM", "False", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "6"]
    overrides += ["SOLVER.IMS_PER_BATCH", "4"]
    two = str(tmp_path / "two")
    launch(_train_fake, 2, args=(folder, two, overrides))
    rank0 = torch.load(os.path.join(two, "params_rank0_of_2.pt"), weights_only=True)
    rank1 = torch.load(os.path.join(two, "params_rank1_of_2.pt"), weights_only=True)

    one = str(tmp_path / "one")
    _train_fake(folder, one, overrides)
    single = torch.load(os.path.join(one, "params_rank0_of_1.pt"), weights_only=True)

    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the ranks"
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=name)
