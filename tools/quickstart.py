#!/usr/bin/env python
"""The quickstart: generate the shapes data, train the default dynamic-head experiment, evaluate
it, draw its detections, and print one summary line.

    python tools/quickstart.py [--experiment DIR] [--fresh] [--demo-dir DIR] [KEY VALUE ...]

Steps (each subprocess's output is shown and also saved under ``<OUTPUT_DIR>/quickstart/``):

1. data:  generate ``shapes_train`` / ``shapes_val`` (DATASETS.SHAPES) under the dataset root
          (``$CVPODS_DATASETS``, default ``<repo>/datasets``); reused when already there.
2. train: ``cvpods_train`` in the experiment folder (it evaluates on DATASETS.TEST at the end).
3. test:  ``cvpods_test`` in the same folder (latest checkpoint); its bbox AP must equal the AP
          training reported, else the quickstart fails.
4. demo:  ``demo/demo.py --show-gates`` on the first ``--num-demo-images`` validation images.

It ends with exactly one line
``quickstart: bbox AP=<AP> AP50=<AP50> head GFLOPs avg=<x> (<p>% of full) in <minutes> min`` (AP
in percent; ``p``: the head's computed share of its full cost on the test images; minutes of this
run). Step timings and metrics are also written to
``<OUTPUT_DIR>/quickstart/summary.json``.

Re-running: by default a finished training run (``model_final.pth`` and its final results in
OUTPUT_DIR) is reused and only steps 3-4 run again; an interrupted run (a ``last_checkpoint``
without ``model_final.pth``) is resumed from its last checkpoint. A reused run is not checked
against the current config or overrides: after changing them pass ``--fresh``, which moves the
existing OUTPUT_DIR to ``<OUTPUT_DIR>.old`` (replacing an older ``.old``) and trains from scratch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = REPO_ROOT / "cvpods_playground" / "shapes.res18.dynamic.d4.lambda-0_1"
DATASET_ROOT_ENV = "CVPODS_DATASETS"
# AP points (percent) by which cvpods_test may differ from the AP training printed.
AP_TOLERANCE = 0.01


class QuickstartError(RuntimeError):
    """A step failed; the message names the step and the log file to read."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="quickstart.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--experiment",
        default=str(DEFAULT_EXPERIMENT),
        help="experiment folder with config.py and net.py (default: %(default)s)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="train from scratch: move an existing OUTPUT_DIR to <OUTPUT_DIR>.old first",
    )
    parser.add_argument(
        "--demo-dir",
        default=None,
        help="folder for the demo images (default: <OUTPUT_DIR>/demo)",
    )
    parser.add_argument(
        "--num-demo-images",
        type=int,
        default=4,
        help="how many validation images the demo draws (default: %(default)s)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.4,
        help="the demo draws detections scoring at least this (default: %(default)s)",
    )
    parser.add_argument(
        "--datasets",
        default=None,
        help=f"dataset root (default: ${DATASET_ROOT_ENV} if set, else <repo>/datasets)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides KEY VALUE ... passed to training, testing and the demo",
    )
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides come as KEY VALUE pairs; got {args.opts}")
    if args.num_demo_images < 1:
        parser.error("--num-demo-images must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def subprocess_env(dataset_root: Path) -> dict[str, str]:
    """The environment of the steps: the dataset root, and the repo importable as ``cvpods``."""
    env = dict(os.environ)
    env[DATASET_ROOT_ENV] = str(dataset_root)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def launcher_command(name: str) -> list[str]:
    """``cvpods_train`` / ``cvpods_test`` of this interpreter's environment when installed, else
    the launcher function run by this interpreter."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    function = {"cvpods_train": "train_main", "cvpods_test": "test_main"}[name]
    return [sys.executable, "-c", f"from cvpods.engine.launcher import {function}; {function}()"]


def run_step(
    step: str, command: list[str], cwd: Path, env: dict[str, str], log_file: Path, hint: str
) -> float:
    """Run ``command``, echoing its output and saving it to ``log_file``; return seconds taken.

    Raises:
        QuickstartError: the command exited with a non-zero status.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"quickstart: [{step}] {' '.join(command)}  (in {cwd}; output also in {log_file})")
    sys.stdout.flush()
    start = time.perf_counter()
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        returncode = process.wait()
    if returncode != 0:
        raise QuickstartError(
            f"step '{step}' failed with exit code {returncode}; read {log_file}" + hint
        )
    return time.perf_counter() - start


def read_results(path: Path, step: str) -> dict[str, Any]:
    """The final metrics JSON a launcher wrote (``{"bbox": {...}, "head_complexity": {...}}``)."""
    if not path.is_file():
        raise QuickstartError(f"step '{step}' wrote no results file {path}")
    with open(path) as f:
        results = json.load(f)
    if "AP" not in results.get("bbox", {}):
        raise QuickstartError(f"{path} (step '{step}') holds no bbox AP: {results}")
    return results


def write_json_atomic(obj: Any, path: Path) -> None:
    """``obj`` as indented JSON in ``path`` (:func:`cvpods.utils.file_io.atomic_write`)."""
    from cvpods.utils.file_io import atomic_write

    atomic_write(path, json.dumps(obj, indent=2))


def move_aside(output_dir: Path) -> None:
    """``--fresh``: keep the previous run as ``<output_dir>.old`` (replacing an older one)."""
    if not output_dir.exists():
        return
    old = output_dir.with_name(output_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    output_dir.rename(old)
    print(f"quickstart: --fresh: moved the previous run to {old}")


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def prepare_data(cfg: Any) -> list[str]:
    """Generate (or find) the train / test datasets; return the test images' paths."""
    from cvpods.data import DatasetCatalog
    from cvpods.data.datasets.builtin import register_shapes_from_config
    from cvpods.utils.logger import setup_logger

    setup_logger(name="cvpods", level=logging.INFO)  # show the generator's progress
    register_shapes_from_config(cfg)
    for name in list(cfg.DATASETS.TRAIN):
        DatasetCatalog.get(name)
    test_dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])
    return [d["file_name"] for d in test_dicts]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    experiment = Path(args.experiment).resolve()
    dataset_root = Path(
        args.datasets or os.environ.get(DATASET_ROOT_ENV) or REPO_ROOT / "datasets"
    ).resolve()
    os.environ[DATASET_ROOT_ENV] = str(dataset_root)
    sys.path.insert(0, str(REPO_ROOT))
    env = subprocess_env(dataset_root)
    timings: dict[str, float] = {}

    from cvpods.engine.launcher import ExperimentError, load_experiment, prepare_config

    try:
        cfg, _ = load_experiment(str(experiment))
        prepare_config(cfg, str(experiment), args.opts)
    except (ExperimentError, ValueError, KeyError) as error:
        raise QuickstartError(f"cannot load the experiment {experiment}: {error}") from error
    if not cfg.DATASETS.TEST:
        raise QuickstartError(f"{experiment}: DATASETS.TEST is empty; nothing to evaluate")
    output_dir = Path(cfg.OUTPUT_DIR)
    test_name = cfg.DATASETS.TEST[0]
    results_path = output_dir / "inference" / test_name / "results.json"
    if args.fresh:
        move_aside(output_dir)
    logs = output_dir / "quickstart"
    logs.mkdir(parents=True, exist_ok=True)
    train_log_hint = f" (and the training log {output_dir / 'log.txt'})"

    # 1. data
    t0 = time.perf_counter()
    print(f"quickstart: [data] datasets {list(cfg.DATASETS.TRAIN)} + {test_name} in {dataset_root}")
    try:
        test_images = prepare_data(cfg)
    except Exception as error:
        raise QuickstartError(
            f"step 'data' failed: {type(error).__name__}: {error} (dataset root {dataset_root})"
        ) from error
    timings["data"] = time.perf_counter() - t0

    # 2. train (or reuse / resume)
    finished = (output_dir / "model_final.pth").is_file() and results_path.is_file()
    if finished:
        print(f"quickstart: [train] reusing the finished run in {output_dir} (--fresh retrains)")
        timings["train"] = 0.0
    else:
        resume = ["--resume"] if (output_dir / "last_checkpoint").is_file() else []
        if resume:
            print(f"quickstart: [train] resuming the interrupted run in {output_dir}")
        timings["train"] = run_step(
            "train",
            launcher_command("cvpods_train") + resume + list(args.opts),
            experiment,
            env,
            logs / "train.log",
            train_log_hint,
        )
    train_results = read_results(results_path, "train")

    # 3. test
    timings["test"] = run_step(
        "test",
        launcher_command("cvpods_test") + list(args.opts),
        experiment,
        env,
        logs / "test.log",
        f" (and {output_dir / 'log.txt'})",
    )
    test_results = read_results(results_path, "test")
    train_ap, test_ap = train_results["bbox"]["AP"], test_results["bbox"]["AP"]
    if abs(train_ap - test_ap) > AP_TOLERANCE:
        raise QuickstartError(
            f"step 'test': cvpods_test's bbox AP {test_ap:.3f} differs from the AP {train_ap:.3f} "
            f"at the end of training; read {logs / 'test.log'} and {logs / 'train.log'}"
        )

    # 4. demo
    demo_dir = Path(args.demo_dir).resolve() if args.demo_dir else output_dir / "demo"
    demo_inputs = test_images[: args.num_demo_images]
    timings["demo"] = run_step(
        "demo",
        [sys.executable, str(REPO_ROOT / "demo" / "demo.py"), "--config", str(experiment)]
        + ["--input", *demo_inputs, "--output", str(demo_dir), "--show-gates"]
        + ["--confidence-threshold", str(args.confidence_threshold)]
        + list(args.opts),
        experiment,
        env,
        logs / "demo.log",
        "",
    )

    minutes = (time.perf_counter() - start) / 60
    bbox = test_results["bbox"]
    complexity = test_results.get("head_complexity") or {}
    gflops = complexity.get("avg_gflops")
    used_fraction = complexity.get("used_fraction")
    summary = dict(
        experiment=str(experiment),
        output_dir=str(output_dir),
        demo_dir=str(demo_dir),
        demo_images=[str(demo_dir / Path(p).name) for p in demo_inputs],
        reused_training=finished,
        seconds=dict(timings, total=minutes * 60),
        train_bbox=train_results["bbox"],
        test_bbox=bbox,
        head_complexity=test_results.get("head_complexity"),
    )
    write_json_atomic(summary, logs / "summary.json")
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    print(f"quickstart: steps: {steps}; demo images in {demo_dir}; details in {logs}")
    gflops_text = f"{gflops:.3f}" if isinstance(gflops, int | float) else "n/a"
    if isinstance(used_fraction, int | float):
        gflops_text += f" ({100 * used_fraction:.0f}% of full)"
    print(
        f"quickstart: bbox AP={bbox['AP']:.1f} AP50={bbox['AP50']:.1f} "
        f"head GFLOPs avg={gflops_text} in {minutes:.1f} min"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QuickstartError as error:
        print(f"quickstart: error: {error}", file=sys.stderr)
        sys.exit(1)
