"""Issue 13, item 2: nothing in a run's OUTPUT_DIR is overwritten silently.

Uses the fake experiment of test_engine_support (a tiny conv net, "fake_val" evaluation) run
through the real ``cvpods_train`` / ``cvpods_test`` entry points, in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_engine_support import (  # noqa: F401 - autouse fixtures
    one_torch_thread,
    write_fake_experiment,
)

from cvpods.checkpoint.run_folder import (
    LOCK_FILE,
    OutputDirLock,
    OutputDirLockedError,
    previous_run,
)
from cvpods.engine import launcher as launcher_module
from cvpods.engine.defaults import default_argument_parser

TRAIN = ["SOLVER.MAX_ITER", "4"]


@pytest.fixture
def experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = write_fake_experiment(tmp_path / "exp")
    monkeypatch.chdir(folder)
    return folder


def _train(*argv: str) -> None:
    launcher_module.train_main([*argv, *TRAIN])


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ------------------------------------------------------------------ cvpods_test of other weights
def test_testing_other_weights_keeps_the_training_record(experiment: Path) -> None:
    _train()
    out = experiment / "log"
    results = out / "inference" / "fake_val" / "results.json"
    dump = out / "config_dump.py"
    trained_results, trained_dump = results.read_bytes(), dump.read_bytes()

    # Other weights: the run's final model with a changed head (different metrics).
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    state["head.bias"] = state["head.bias"] + 3.0
    torch.save({"model": state}, experiment / "other.pth")
    launcher_module.test_main(["MODEL.WEIGHTS", "other.pth"])

    assert results.read_bytes() == trained_results
    assert dump.read_bytes() == trained_dump
    evaluated = out / "eval" / "other"
    other = json.loads((evaluated / "inference" / "fake_val" / "results.json").read_text())
    assert other != json.loads(trained_results)
    assert "other.pth" in (evaluated / "config_dump.py").read_text()
    assert (evaluated / "weights.txt").read_text().strip() == str(experiment / "other.pth")
    assert "weights evaluated" in (evaluated / "log.txt").read_text()

    # An older checkpoint of the run is "other weights" too: it must not replace the final
    # results. Another file with the same name gets a folder of its own.
    launcher_module.test_main(["MODEL.WEIGHTS", "log/model_0000003.pth"])
    assert (out / "eval" / "model_0000003" / "inference" / "fake_val" / "results.json").is_file()
    assert results.read_bytes() == trained_results
    (experiment / "elsewhere").mkdir()
    torch.save({"model": state}, experiment / "elsewhere" / "other.pth")
    launcher_module.test_main(["MODEL.WEIGHTS", "elsewhere/other.pth"])
    assert len(list((out / "eval").glob("other-*"))) == 1

    # The default (the run's newest checkpoint) re-evaluates into the run; its config goes to
    # inference/config_dump.py, the training's config_dump.py stays.
    launcher_module.test_main(["TEST.DETECTIONS_PER_IMAGE", "50"])
    assert dump.read_bytes() == trained_dump
    assert "DETECTIONS_PER_IMAGE: 100 -> 50" in (out / "inference" / "config_dump.py").read_text()
    assert json.loads(results.read_text()) == json.loads(trained_results)


# ------------------------------------------------------------------ cvpods_train over a run
def test_training_again_over_a_finished_run_is_refused(
    experiment: Path, capsys: pytest.CaptureFixture
) -> None:
    _train()
    out = experiment / "log"
    final = (out / "model_final.pth").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _train()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "already holds a finished run" in err and "model_final.pth" in err
    assert "--resume" in err and "--start-over" in err
    assert (out / "model_final.pth").read_bytes() == final
    assert not (out / LOCK_FILE).exists()  # the refusal released the lock

    # --start-over moves the old run aside (nothing deleted) and trains from scratch.
    _train("--start-over", "SOLVER.BASE_LR", "0.02")
    moved = list(experiment.glob("log.old-*"))
    assert len(moved) == 1
    assert (moved[0] / "model_final.pth").read_bytes() == final
    assert (moved[0] / "inference" / "fake_val" / "results.json").is_file()
    assert not (moved[0] / LOCK_FILE).exists()
    assert (out / "model_final.pth").is_file()
    assert (out / "model_final.pth").read_bytes() != final
    assert "SOLVER.BASE_LR: 0.01 -> 0.02" in (out / "config_dump.py").read_text()


def test_an_interrupted_run_is_refused_too_and_resume_continues_it(
    experiment: Path, capsys: pytest.CaptureFixture
) -> None:
    eight = ["SOLVER.MAX_ITER", "8"]
    launcher_module.train_main(eight)
    out = experiment / "log"
    (out / "model_final.pth").unlink()
    (out / "model_0000007.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000003.pth")
    run = previous_run(str(out))
    assert run is not None and not run.finished and run.last_checkpoint == "model_0000003.pth"
    with pytest.raises(SystemExit):
        launcher_module.train_main(eight)
    assert "an interrupted run" in capsys.readouterr().err
    launcher_module.train_main(["--resume", *eight])
    assert (out / "model_final.pth").is_file()


def test_resume_and_start_over_are_exclusive(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        default_argument_parser().parse_intermixed_args(["--resume", "--start-over"])
    assert "not allowed with argument" in capsys.readouterr().err


# ------------------------------------------------------------------ the OUTPUT_DIR lock
HOLDER = """
import sys, time
from cvpods.checkpoint.run_folder import OutputDirLock
lock = OutputDirLock(sys.argv[1], command="holder").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_in_the_same_folder_fails_naming_the_pid(
    experiment: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    out = experiment / "log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as info:
            _train()
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"is in use by PID {holder.pid} on {socket.gethostname()}" in err
        assert not (out / "log.txt").exists()  # nothing was written
    finally:
        holder.kill()  # like kill -9: the lock file stays behind
        holder.wait()
    # The holder is gone: its lock is stale, detected and taken over.
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
    with caplog.at_level("WARNING", logger="cvpods.checkpoint.run_folder"):
        _train()
    assert (out / "model_final.pth").is_file()
    assert f"removed a stale lock of PID {holder.pid}" in caplog.text
    assert not (out / LOCK_FILE).exists()


def test_lock_in_process_stale_and_foreign(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "out"
    with OutputDirLock(str(folder), command="first"):
        record = json.loads((folder / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "first"
        with pytest.raises(OutputDirLockedError, match=f"in use by PID {os.getpid()}"):
            OutputDirLock(str(folder)).acquire()
    assert not (folder / LOCK_FILE).exists()

    dead = _dead_pid()
    stale = {"pid": dead, "host": socket.gethostname(), "started": "earlier", "command": "x"}
    (folder / LOCK_FILE).write_text(json.dumps(stale))
    with caplog.at_level("WARNING", logger="cvpods.checkpoint.run_folder"):
        with OutputDirLock(str(folder)):
            pass
    assert f"removed a stale lock of PID {dead}" in caplog.text

    # A lock recorded on another host cannot be checked from here: never broken automatically.
    foreign = {"pid": 12345, "host": "another-host.example", "started": "now"}
    (folder / LOCK_FILE).write_text(json.dumps(foreign))
    with pytest.raises(OutputDirLockedError, match="PID 12345 on another-host.example"):
        OutputDirLock(str(folder)).acquire()
    assert OutputDirLock.holder(str(folder))["pid"] == 12345


# ------------------------------------------------------------------ interrupted writes
def test_temporary_files_of_interrupted_writes_are_removed_at_start(experiment: Path) -> None:
    _train()
    out = experiment / "log"
    leftovers = [
        out / ".model_0000007.pth.0123456789ab.tmp",
        out / ".last_checkpoint.a1b2c3d4e5f6.tmp",
        out / "inference" / "fake_val" / ".results.json.00000000abcd.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    kept = out / "notes.tmp"  # not ours
    kept.write_text("mine")
    _train("--resume")
    assert not any(p.exists() for p in leftovers)
    assert kept.read_text() == "mine"
    log = (out / "log.txt").read_text()
    assert f"Removed {leftovers[0]}, left by an interrupted write" in log


@pytest.mark.slow
def test_two_cvpods_train_at_once_in_one_folder(experiment: Path) -> None:
    """The issue's case with two real processes: the second stops at once, the first finishes."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", "from cvpods.engine.launcher import train_main; train_main()"]
    slow = ["SOLVER.MAX_ITER", "16", "MODEL.FAKE.SLEEP", "0.75"]
    first = subprocess.Popen(
        command + slow, cwd=experiment, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        lock = experiment / "log" / LOCK_FILE
        for _ in range(600):
            if lock.exists() and lock.read_text().strip():
                break
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run(
            command + slow, cwd=experiment, env=env, capture_output=True, text=True, timeout=120
        )
        assert first.poll() is None, "the first run ended too early for this test"
        assert second.returncode == 2
        assert f"is in use by PID {first.pid} on {socket.gethostname()}" in second.stderr
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    out = experiment / "log"
    assert sorted(p.name for p in out.glob("*.pth")) == [
        "model_0000003.pth",
        "model_0000007.pth",
        "model_0000011.pth",
        "model_0000015.pth",
        "model_final.pth",
    ]
    assert (out / "log.txt").read_text().count("Starting training from iteration 0") == 1
