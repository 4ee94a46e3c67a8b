"""Issue 13: the demo never overwrites its inputs (item 2), and errors a person can act on
(item 5): a full disk, ``cvpods_test --help``, ``--confidence-threshold``, videos counted; large,
grayscale and 16-bit images keep working in the demo."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_engine_support import (  # noqa: F401 - autouse fixtures
    one_torch_thread,
    write_fake_experiment,
)
from test_robustness_support import load_demo, write_tiny_fcos_experiment

from cvpods.checkpoint import DiskFullError, file_io
from cvpods.engine import launcher as launcher_module
from cvpods.engine.defaults import default_argument_parser
from cvpods.utils import file_io as atomic_file_io


def _images(folder: Path, names: list[str], size: tuple[int, int] = (40, 50)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        cv2.imwrite(str(path), np.full((*size, 3), 40 * i, np.uint8))
        paths.append(path)
    return paths


def _run_demo(argv: list[str]) -> int:
    return load_demo().main(argv)


# ------------------------------------------------------------------ demo outputs (item 2)
def test_demo_refuses_to_write_over_its_inputs(tmp_path: Path) -> None:
    folder = write_tiny_fcos_experiment(tmp_path / "tiny")
    inputs = _images(tmp_path / "photos", ["a.png", "b.png"])
    before = [p.read_bytes() for p in inputs]
    for output in (str(tmp_path / "photos"), str(tmp_path / "photos") + "/"):
        with pytest.raises(SystemExit) as info:
            _run_demo(["--config", str(folder), "--input", str(tmp_path / "photos")]
                      + ["--output", output])  # fmt: skip
        assert f"refusing to write {inputs[0]}: it is the input {inputs[0]}" in str(info.value)
    # One image, --output naming that very image.
    with pytest.raises(SystemExit, match="it is the input"):
        _run_demo(["--config", str(folder), "--input", str(inputs[1]), "--output", str(inputs[1])])
    # A gate picture would overwrite another input (of the same output folder).
    gates = _images(tmp_path / "other", ["a_gates.png"])
    with pytest.raises(SystemExit, match="a_gates.png: it is the input"):
        _run_demo(["--config", str(folder), "--input", str(inputs[0]), str(gates[0])]
                  + ["--output", str(tmp_path / "other"), "--show-gates"])  # fmt: skip
    assert [p.read_bytes() for p in inputs] == before


def test_several_inputs_and_a_file_output_is_an_error(tmp_path: Path) -> None:
    folder = write_tiny_fcos_experiment(tmp_path / "tiny")
    inputs = _images(tmp_path / "photos", ["a.png", "b.png"])
    with pytest.raises(SystemExit) as info:
        _run_demo(["--config", str(folder), "--input", *map(str, inputs)]
                  + ["--output", str(tmp_path / "x.jpg")])  # fmt: skip
    assert "--output" in str(info.value) and "is a file name, but 2 inputs" in str(info.value)
    assert not (tmp_path / "x.jpg").exists()  # before: a directory named x.jpg
    # Two inputs of the same name would overwrite each other's picture.
    other = _images(tmp_path / "more", ["a.png"])
    with pytest.raises(SystemExit, match="would both be written to"):
        _run_demo(["--config", str(folder), "--input", str(inputs[0]), str(other[0])]
                  + ["--output", str(tmp_path / "out")])  # fmt: skip


def test_demo_counts_videos_and_reads_large_grayscale_and_16bit_images(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = write_tiny_fcos_experiment(tmp_path / "tiny")
    from cvpods.engine.launcher import load_experiment

    cfg, build_model = load_experiment(str(folder))
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "weights.pth")
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "gray.png"), np.full((40, 50), 120, np.uint8))
    cv2.imwrite(str(photos / "deep.png"), np.full((40, 50, 3), 40000, np.uint16))
    cv2.imwrite(str(photos / "large.jpg"), np.full((3000, 4000, 3), 90, np.uint8))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 50 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    code = _run_demo(["--config", str(folder), "--input", str(photos), str(video)]
                     + ["--output", str(out), "MODEL.WEIGHTS", str(tmp_path / "weights.pth")])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "clip.mp4",
        "deep.png",
        "gray.png",
        "large.jpg",
    ]
    assert cv2.imread(str(out / "large.jpg")).shape == (3000, 4000, 3)
    assert f"wrote 4 result(s) to {out} (3 image(s), 1 video(s))" in capsys.readouterr().out


def test_confidence_threshold_has_help_text(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        load_demo().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--confidence-threshold SCORE draw (and count) only detections scoring at least" in text


# ------------------------------------------------------------------ --help (item 5)
def test_cvpods_test_help_lists_no_training_flags(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        launcher_module._parse(["--help"], "cvpods_test", "Evaluate.", training=False)
    test_help = capsys.readouterr().out
    for flag in ("--resume", "--start-over", "--eval-only"):
        assert flag not in test_help
    assert "--num-gpus" in test_help
    with pytest.raises(SystemExit):
        launcher_module.test_main(["--resume"])  # not an option of cvpods_test
    assert "unrecognized arguments: --resume" in capsys.readouterr().err
    train_help = default_argument_parser().format_help()
    for flag in ("--resume", "--start-over", "--eval-only"):
        assert flag in train_help


# ------------------------------------------------------------------ a full disk (item 5)
def _full_disk_for_binary_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Binary atomic writes (checkpoints) go to /dev/full, whose writes fail with ENOSPC."""
    real = atomic_file_io._open_temporary

    def open_temporary(fd: int, mode: str):
        if "b" not in mode:
            return real(fd, mode)
        os.close(fd)
        return open("/dev/full", mode)  # noqa: SIM115 - closed by the caller's with

    monkeypatch.setattr(atomic_file_io, "_open_temporary", open_temporary)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_during_a_checkpoint_write_says_so_on_the_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = write_fake_experiment(tmp_path / "exp")
    monkeypatch.chdir(folder)
    _full_disk_for_binary_files(monkeypatch)
    with pytest.raises(SystemExit) as info:
        launcher_module.train_main(["SOLVER.MAX_ITER", "4"])
    assert info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    path = folder / "log" / "model_0000003.pth"
    assert (
        last
        == f"cvpods_train: error: no space left on device: {path} (the file was left unchanged)"
    )
    assert not list((folder / "log").glob(".*.tmp"))  # the partial file was removed
    assert not path.exists()


def test_disk_full_is_recognised_in_torch_errors(tmp_path: Path) -> None:
    def torch_like(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:1] . No space left on device")

    target = tmp_path / "m.pth"
    with pytest.raises(DiskFullError) as info:
        file_io.atomic_save({}, str(target), save_fn=torch_like)
    assert str(info.value) == f"no space left on device: {target} (the file was left unchanged)"
    assert info.value.errno == errno.ENOSPC

    def other_failure(obj, f):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        file_io.atomic_save({}, str(target), save_fn=other_failure)
    assert list(tmp_path.iterdir()) == []


def test_a_worker_process_error_ends_with_its_message() -> None:
    """With --num-gpus N the error comes back as the worker's traceback text."""
    traceback_text = (
        "\n\n-- Process 1 terminated with the following error:\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 3, in save\n'
        "    raise DiskFullError(path)\n"
        "cvpods.checkpoint.file_io.DiskFullError: no space left on device: /r/log/m.pth (the file "
        "was left unchanged)\n"
    )
    assert launcher_module.child_error_message(traceback_text) == (
        "no space left on device: /r/log/m.pth (the file was left unchanged)"
    )
    listed = "BadDataError: dataset 'x': 2 of 6 images cannot be used:\n  a.jpg: no such file\n"
    assert launcher_module.child_error_message("Traceback ...\n" + listed) == listed.split(": ", 1)[
        1
    ].rstrip("\n")
