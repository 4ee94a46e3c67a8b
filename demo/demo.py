#!/usr/bin/env python
"""Draw a detector's predictions on images or a video.

    python demo/demo.py --config cvpods_playground/<experiment> --input 'photos/*.jpg' \
        --output out/ [--confidence-threshold 0.5] [--show-gates] [--bf16 | --bf16-force] \
        [MODEL.WEIGHTS path] [KEY VALUE ...]

``--config`` is an experiment folder (config.py + net.py) or its config.py. Weights default to
the latest checkpoint of the experiment's OUTPUT_DIR; weights that fill less than
MODEL.WEIGHTS_MIN_MATCHED_FRACTION of the model are refused. ``--input`` takes image files, globs,
folders and videos (.mp4/.avi/.mov/.mkv). Dynamic heads also log the head's GFLOPs per image, and
``--show-gates`` writes, next to each picture, the fraction of depth cells the head computed at
each position of each pyramid level (the spatial gates) as heat-map overlays.

``--output`` is a folder, or a file name (.jpg, .png, ..., .mp4) when there is a single input.
Every output path is planned before anything runs: writing over an input, two inputs with the
same output name, or a file name for several inputs are errors.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from predictor import Prediction, Predictor  # noqa: E402

from cvpods.checkpoint import (  # noqa: E402
    NotACheckpointError,
    UnsafeCheckpointError,
    WeightsMismatchError,
)
from cvpods.configs import ConfigError  # noqa: E402
from cvpods.data import MetadataCatalog  # noqa: E402
from cvpods.engine.launcher import (  # noqa: E402
    ExperimentError,
    find_weights_to_test,
    load_experiment,
    prepare_config,
)
from cvpods.engine.precision import (  # noqa: E402
    add_precision_arguments,
    apply_inference_dtype,
    inference_dtype,
    precision_overrides,
)
from cvpods.utils.file_io import atomic_write  # noqa: E402
from cvpods.utils.logger import setup_logger  # noqa: E402
from cvpods.utils.visualizer import draw_instances, overlay_heatmap  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv"}
logger = logging.getLogger("cvpods.demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", required=True, help="experiment folder (config.py + net.py) or its config.py"
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="images, globs, folders or a video"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output folder, or a file name (.jpg/.png/... or .mp4) for a single input; never "
        "one of the inputs",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        metavar="SCORE",
        help="draw (and count) only detections scoring at least this, in [0, 1] (default 0.5)",
    )
    parser.add_argument(
        "--show-gates", action="store_true", help="also write the gate maps (dynamic heads)"
    )
    add_precision_arguments(parser)  # --bf16, --bf16-force
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths, globs and folders (images inside a folder, sorted)."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(
                    f"--input {pattern!r}: no such file, folder or matching files"
                )
            files.extend(matches)
    return files


class OutputError(ValueError):
    """``--output`` would overwrite an input or another output, or is a file for many inputs."""


def output_is_file(output: str) -> bool:
    """Whether ``--output`` names a file (an image / video suffix, not an existing folder)."""
    out = Path(output)
    suffix = out.suffix.lower()
    return not out.is_dir() and suffix in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def gates_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_gates{out.suffix}")


def plan_outputs(inputs: list[Path], output: str, show_gates: bool) -> dict[Path, list[Path]]:
    """``{input: [its output files]}``, checked before anything is written.

    Raises:
        OutputError: several inputs but ``--output`` names a file; a video written to an image
            file name (or an image to a video name); an output path that is one of the inputs;
            two outputs with the same path.
    """
    many = len(inputs) > 1
    if many and output_is_file(output):
        raise OutputError(
            f"--output {output!r} is a file name, but {len(inputs)} inputs were given: give a "
            "folder instead (e.g. --output out/)"
        )
    if not many and inputs and output_is_file(output):
        source_is_video = is_video(inputs[0])
        if source_is_video != (Path(output).suffix.lower() in VIDEO_SUFFIXES):
            kind = "a video" if source_is_video else "an image"
            raise OutputError(
                f"--output {output!r}: the input {inputs[0]} is {kind}; give a folder or a "
                f"file name with {'a video (.mp4)' if source_is_video else 'an image'} suffix"
            )
    out = Path(output)
    single_file = not many and output_is_file(output)
    planned: dict[Path, list[Path]] = {}
    for source in inputs:
        if single_file:
            first = out
        else:
            name = source.with_suffix(".mp4").name if is_video(source) else source.name
            first = out / name
        paths = [first]
        if show_gates and not is_video(source):
            paths.append(gates_path(first))
        planned[source] = paths
    _refuse_collisions(planned)
    return planned


def _refuse_collisions(planned: dict[Path, list[Path]]) -> None:
    inputs = {os.path.realpath(p): p for p in planned}
    owner: dict[str, Path] = {}
    for source, paths in planned.items():
        for path in paths:
            real = os.path.realpath(path)
            if real in inputs:
                raise OutputError(
                    f"refusing to write {path}: it is the input {inputs[real]}. Choose an "
                    "--output folder other than the inputs' folder"
                )
            if real in owner:
                raise OutputError(
                    f"the inputs {owner[real]} and {source} would both be written to {path} "
                    "(same file name): run them separately or rename one"
                )
            owner[real] = source


def gate_panel(image: np.ndarray, gate_maps: list[np.ndarray]) -> np.ndarray:
    """One overlay per pyramid level (P3 first), side by side."""
    height = 256
    small = cv2.resize(image, (max(1, round(image.shape[1] * height / image.shape[0])), height))
    tiles = [
        overlay_heatmap(small, m, label=f"P{3 + i} {m.mean():.0%}") for i, m in enumerate(gate_maps)
    ]
    return np.concatenate(tiles, axis=1)


def render(image: np.ndarray, prediction: Prediction, class_names, threshold: float) -> np.ndarray:
    return draw_instances(image, prediction.instances, class_names, threshold)


def log_prediction(name: str, prediction: Prediction, threshold: float) -> None:
    kept = int((prediction.instances.scores >= threshold).sum())
    gflops = (
        f", head {prediction.head_gflops:.3f} GFLOPs" if prediction.head_gflops is not None else ""
    )
    logger.info("%s: %d detections in %.3f s%s", name, kept, prediction.seconds, gflops)


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` (BGR ``[H, W, 3]`` uint8) in the format of ``path``'s suffix and write it
    atomically (:func:`cvpods.utils.file_io.atomic_write`)."""
    ok, encoded = cv2.imencode(path.suffix or ".jpg", image)
    if not ok:
        raise OSError(f"could not write {path}")
    atomic_write(path, encoded.tobytes())


def _copy_file(source: str, target) -> None:
    with open(source, "rb") as f:
        shutil.copyfileobj(f, target)


def run_video(predictor: Predictor, source: Path, out_path: Path, class_names, args) -> None:
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise OSError(f"cannot open video {source}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    # OpenCV writes videos to a file name: a scratch file, copied atomically into place.
    scratch = tempfile.TemporaryDirectory()
    tmp = Path(scratch.name) / f"{out_path.stem}.mp4"
    for _ in tqdm.tqdm(range(frames) if frames else iter(int, 1), desc=source.name, unit="frame"):
        ok, frame = capture.read()
        if not ok:
            break
        prediction = predictor(frame)
        drawn = render(frame, prediction, class_names, args.confidence_threshold)
        if writer is None:
            writer = cv2.VideoWriter(
                str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, drawn.shape[1::-1]
            )
        writer.write(drawn)
    capture.release()
    try:
        if writer is None:
            raise OSError(f"{source}: no frame could be read")
        writer.release()
        atomic_write(out_path, str(tmp), save_fn=_copy_file)
    finally:
        scratch.cleanup()
    logger.info("wrote %s", out_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger(name="cvpods")
    folder = args.config[: -len("config.py")] if args.config.endswith("config.py") else args.config
    folder = os.path.abspath(folder or ".")
    try:
        inputs = expand_inputs(args.input)
        planned = plan_outputs(inputs, args.output, args.show_gates)
        cfg, build_model = load_experiment(folder)
        cfg = prepare_config(cfg, folder, [*args.opts, *precision_overrides(args)])
        weights = find_weights_to_test(cfg, folder, args.opts)
        cfg.MODEL.WEIGHTS = weights
        predictor = Predictor(cfg, build_model, record_gates=args.show_gates)
        apply_inference_dtype(predictor.model, inference_dtype(cfg), cfg.MODEL.DEVICE)
    except (
        ExperimentError,
        ConfigError,
        OutputError,
        FileNotFoundError,
        WeightsMismatchError,
        NotACheckpointError,
        UnsafeCheckpointError,
    ) as error:
        sys.exit(f"demo: error: {error}")
    dataset = (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN or [None])[0]
    class_names = MetadataCatalog.get(dataset).get("thing_classes") if dataset else None
    logger.info("model %s with weights %s", os.path.basename(folder), weights)

    videos = [p for p in inputs if is_video(p)]
    images = [p for p in inputs if not is_video(p)]
    for video in videos:
        run_video(predictor, video, planned[video][0], class_names, args)
    progress = tqdm.tqdm(images, unit="image", disable=len(images) < 2)
    for path in progress:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read image {path}")
        prediction = predictor(image)
        log_prediction(path.name, prediction, args.confidence_threshold)
        out = planned[path][0]
        out.parent.mkdir(parents=True, exist_ok=True)
        write_image(out, render(image, prediction, class_names, args.confidence_threshold))
        if args.show_gates:
            if prediction.gate_maps:
                write_image(gates_path(out), gate_panel(image, prediction.gate_maps))
            else:
                logger.warning(
                    "--show-gates: %s has no dynamic head; no gate maps written",
                    os.path.basename(folder),
                )
    logger.info(
        "wrote %d result(s) to %s (%d image(s), %d video(s))",
        len(images) + len(videos),
        args.output,
        len(images),
        len(videos),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
