#!/usr/bin/env python
"""Draw a detector's predictions on images or a video.

    python demo/demo.py --config cvpods_playground/<experiment> --input 'photos/*.jpg' \
        --output out/ [--confidence-threshold 0.5] [--show-gates] [MODEL.WEIGHTS path] [KEY VALUE ...]

``--config`` is an experiment folder (config.py + net.py) or its config.py. Weights default to
the latest checkpoint of the experiment's OUTPUT_DIR. ``--input`` takes image files, globs,
folders and videos (.mp4/.avi/.mov/.mkv). Dynamic heads also log the head's GFLOPs per image, and
``--show-gates`` writes, next to each picture, the fraction of depth cells the head computed at
each position of each pyramid level (the spatial gates) as heat-map overlays.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from predictor import Prediction, Predictor  # noqa: E402

from cvpods.data import MetadataCatalog  # noqa: E402
from cvpods.engine.launcher import (  # noqa: E402
    ExperimentError,
    find_weights_to_test,
    load_experiment,
    prepare_config,
)
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
        "--output", required=True, help="output folder (or a file name for one image / a video)"
    )
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "--show-gates", action="store_true", help="also write the gate maps (dynamic heads)"
    )
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


def output_path(output: str, source: Path, many: bool) -> Path:
    out = Path(output)
    if many or out.is_dir() or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
        return out / source.name
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


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
    """Write through a temporary file in the same folder, then rename."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)


def run_video(predictor: Predictor, source: Path, output: str, class_names, args) -> None:
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise OSError(f"cannot open video {source}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path = output_path(output, source.with_suffix(".mp4"), many=False)
    writer = None
    tmp = out_path.with_name(f".{out_path.stem}.tmp.mp4")
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
    if writer is None:
        raise OSError(f"{source}: no frame could be read")
    writer.release()
    os.replace(tmp, out_path)
    logger.info("wrote %s", out_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger(name="cvpods")
    folder = args.config[: -len("config.py")] if args.config.endswith("config.py") else args.config
    folder = os.path.abspath(folder or ".")
    try:
        cfg, build_model = load_experiment(folder)
        cfg = prepare_config(cfg, folder, args.opts)
        weights = find_weights_to_test(cfg, folder, args.opts)
    except ExperimentError as error:
        sys.exit(f"demo: {error}")
    cfg.MODEL.WEIGHTS = weights
    dataset = (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN or [None])[0]
    class_names = MetadataCatalog.get(dataset).get("thing_classes") if dataset else None
    predictor = Predictor(cfg, build_model, record_gates=args.show_gates)
    logger.info("model %s with weights %s", os.path.basename(folder), weights)

    inputs = expand_inputs(args.input)
    videos = [p for p in inputs if p.suffix.lower() in VIDEO_SUFFIXES]
    images = [p for p in inputs if p.suffix.lower() not in VIDEO_SUFFIXES]
    for video in videos:
        run_video(predictor, video, args.output, class_names, args)
    progress = tqdm.tqdm(images, unit="image", disable=len(images) < 2)
    for path in progress:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read image {path}")
        prediction = predictor(image)
        log_prediction(path.name, prediction, args.confidence_threshold)
        out = output_path(args.output, path, many=len(images) > 1)
        write_image(out, render(image, prediction, class_names, args.confidence_threshold))
        if args.show_gates:
            if prediction.gate_maps:
                write_image(
                    out.with_name(f"{out.stem}_gates{out.suffix}"),
                    gate_panel(image, prediction.gate_maps),
                )
            else:
                logger.warning(
                    "--show-gates: %s has no dynamic head; no gate maps written",
                    os.path.basename(folder),
                )
    logger.info("wrote %d image(s) to %s", len(images), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
