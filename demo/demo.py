#!/usr/bin/env python
"""Draw a detector's predictions on images or a video.

    python demo/demo.py --config cvpods_playground/<experiment> --input 'photos/*.jpg' \
        --output out/ [--confidence-threshold 0.5] [--show-gates] [--bf16 | --bf16-force] \
        [MODEL.WEIGHTS path] [KEY VALUE ...]

``--config`` is an experiment folder (config.py + net.py) or its config.py. Weights default to
the latest checkpoint of the experiment's OUTPUT_DIR; weights that fill less than
MODEL.WEIGHTS_MIN_MATCHED_FRACTION of the model are refused. ``--input`` takes image files, globs,
folders and videos (.mp4/.avi/.mov/.mkv). Dynamic heads also log the head's GFLOPs per image, and
``--show-gates`` writes, next to each picture, ``<name>_gates<suffix>``: where the head computes,
per pyramid level (P3..P7), drawn on the image in grey: the depth cells' computed positions in
orange (top row) and the scale-fusion units' in blue (bottom row), more opaque where more of the
level's cells / units compute the position (a unit computes a position where its spatial gate is
not 0). Each tile is labelled with the level and its computed fraction; a legend explains the
colours (see :func:`gate_panel`).

``--output`` is a folder, or a file name (.jpg, .png, ..., .mp4) when there is a single input.
Every output path is planned before anything runs: writing over an input, two inputs with the
same output name, or a file name for several inputs are errors.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
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
from cvpods.utils.visualizer import (  # noqa: E402
    computed_legend,
    draw_instances,
    overlay_computed,
)

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


#: Colours (BGR) of the computed positions in the gate picture: depth cells, fusion units.
DEPTH_COLOR = (0, 150, 255)  # orange
FUSION_COLOR = (255, 150, 0)  # blue
GATE_TILE_HEIGHT = 256


def level_name(index: int, strides: list[int] | None = None) -> str:
    """``P<k>`` for the level of stride ``2**k`` (``strides[index]``); ``P<3 + index>`` (FCOS's
    P3..P7) when the strides are unknown."""
    if strides and index < len(strides):
        return f"P{round(math.log2(strides[index]))}"
    return f"P{3 + index}"


def format_fraction(fraction: float) -> str:
    """``0.4231 -> "42%"``; a fraction that is neither 0 nor 1 never rounds to "0%" / "100%"."""
    if 0 < fraction < 0.005:
        return "<1%"
    if 0.995 <= fraction < 1:
        return ">99%"
    return f"{fraction:.0%}"


def gate_tile_label(name: str, kind: str, fraction: float) -> str:
    """The label of one gate tile, e.g. ``"P3 depth cells: 42% computed"``."""
    return f"{name} {kind}: {format_fraction(fraction)} computed"


def _on_image(cells: np.ndarray, stride: int | None, input_size: tuple[int, int] | None):
    """A gate map of ``[ceil(H / s), ceil(W / s)]`` cells as ``[H, W]`` network-input pixels (each
    cell repeated ``stride`` times, the partial last cells cropped), so that resizing it to the
    image puts every cell where it is; the map itself when the stride or size is unknown."""
    if not stride or input_size is None:
        return cells
    height, width = input_size
    pixels = np.repeat(np.repeat(cells, stride, axis=0), stride, axis=1)[:height, :width]
    return pixels if pixels.shape == (height, width) else cells


def gate_panel(
    image: np.ndarray,
    gate_maps: list[np.ndarray],
    fusion_gate_maps: list[np.ndarray] | None = None,
    strides: list[int] | None = None,
    input_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Where the gated head computes, per pyramid level (finest first, side by side).

    Row 1: the depth cells (``gate_maps``); row 2: the scale-fusion units (``fusion_gate_maps``,
    left out when None or empty). Each tile is the image in grey with the computed positions
    painted (orange: depth cells, blue: fusion units; the more of the level's cells / units
    compute a position, the more opaque), labelled with the level's name and its computed
    fraction (:func:`gate_tile_label`: the mean over the level's positions). A legend at the
    bottom explains the colours. ``strides`` (pixels per cell, per level) and ``input_size`` (the
    network input's unpadded ``(H, W)``) place the cells exactly; without them each map is
    stretched over the image.
    """
    height = GATE_TILE_HEIGHT
    small = cv2.resize(image, (max(1, round(image.shape[1] * height / image.shape[0])), height))
    rows = [("depth cells", DEPTH_COLOR, gate_maps)]
    if fusion_gate_maps:
        rows.append(("fusion units", FUSION_COLOR, fusion_gate_maps))
    strides = strides if strides and len(strides) == len(gate_maps) else None
    drawn = []
    for kind, color, maps in rows:
        tiles = []
        for i, cells in enumerate(maps):
            pixels = _on_image(cells, strides[i] if strides else None, input_size)
            label = gate_tile_label(level_name(i, strides), kind, float(cells.mean()))
            tiles.append(overlay_computed(small, pixels, color, label=label))
        drawn.append(np.concatenate(tiles, axis=1))
    legend_entries = [
        ("depth cells (residual blocks): share of the level's cells computed at a position",
         DEPTH_COLOR),
        ("fusion units (scale fusion): share of the level's units computed at a position",
         FUSION_COLOR),
    ][: len(rows)]  # fmt: skip
    width = max(max(row.shape[1] for row in drawn), 760)
    legend = computed_legend(
        width, legend_entries, footer="grey: skipped (every gate 0); label: level, % computed"
    )
    padded = [np.pad(row, ((0, 2), (0, width - row.shape[1]), (0, 0))) for row in drawn]
    return np.concatenate([*padded, legend], axis=0)


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
                panel = gate_panel(
                    image,
                    prediction.gate_maps,
                    prediction.fusion_gate_maps,
                    prediction.strides,
                    prediction.input_size,
                )
                write_image(gates_path(out), panel)
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
