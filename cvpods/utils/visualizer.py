"""Drawing detections and gate maps on images (OpenCV, BGR uint8 arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..structures import Instances


def class_color(class_id: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour per class id (golden-ratio hue steps)."""
    hue = int((class_id * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_instances(
    image: np.ndarray,
    instances: Instances,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """A copy of ``image`` (``[H, W, 3]`` BGR uint8, the size of ``instances.image_size``) with the
    boxes scoring at least ``score_threshold``, labelled ``name score``."""
    canvas = image.copy()
    keep = instances.scores >= score_threshold
    boxes = instances.pred_boxes.tensor[keep].cpu().numpy()
    scores = instances.scores[keep].cpu().numpy()
    classes = instances.pred_classes[keep].cpu().numpy()
    thickness = max(1, round(max(image.shape[:2]) / 400))
    font_scale = max(0.35, max(image.shape[:2]) / 1500)
    for (x0, y0, x1, y1), score, cls in sorted(zip(boxes, scores, classes), key=lambda t: t[1]):
        color = class_color(int(cls))
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1)))
        cv2.rectangle(canvas, p0, p1, color, thickness, cv2.LINE_AA)
        name = (
            class_names[cls]
            if class_names is not None and cls < len(class_names)
            else str(int(cls))
        )
        label = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = max(p0[1] - th - base - 2, 0)
        cv2.rectangle(canvas, (p0[0], top), (p0[0] + tw + 2, top + th + base + 2), color, -1)
        cv2.putText(
            canvas,
            label,
            (p0[0] + 1, top + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return canvas


def draw_label(
    canvas: np.ndarray,
    text: str,
    origin: tuple[int, int] = (0, 0),
    font_scale: float = 0.45,
    color: tuple[int, int, int] = (255, 255, 255),
    background: tuple[int, int, int] | None = (0, 0, 0),
) -> int:
    """Write ``text`` into ``canvas`` (in place) with its top-left corner at ``origin``, on a
    filled ``background`` box (None: no box). Returns the text's width in pixels."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    x, y = origin
    if background is not None:
        cv2.rectangle(canvas, (x, y), (x + tw + 6, y + th + base + 6), background, -1)
    cv2.putText(
        canvas, text, (x + 3, y + th + 3), cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1,
        cv2.LINE_AA,
    )  # fmt: skip
    return tw + 6


def overlay_computed(
    image: np.ndarray,
    fraction: np.ndarray,
    color: tuple[int, int, int],
    label: str = "",
    min_alpha: float = 0.15,
    max_alpha: float = 0.95,
) -> np.ndarray:
    """``image`` (BGR uint8) in dimmed grey, with the positions where ``fraction`` (``[h, w]`` in
    [0, 1], resized to the image with nearest neighbours) is above 0 painted in ``color``: opacity
    ``min_alpha`` for the smallest fraction up to ``max_alpha`` for 1. Positions at 0 (nothing
    computed) stay grey. An optional ``label`` goes in the top-left corner."""
    height, width = image.shape[:2]
    fraction = cv2.resize(
        np.clip(fraction.astype(np.float32), 0, 1), (width, height), interpolation=cv2.INTER_NEAREST
    )
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    base = grey.astype(np.float32) * 0.6
    alpha = np.where(fraction > 0, min_alpha + (max_alpha - min_alpha) * fraction, 0.0)[..., None]
    painted = base * (1 - alpha) + np.float32(color) * alpha
    out = np.clip(painted + 0.5, 0, 255).astype(np.uint8)
    if label:
        draw_label(out, label, (2, 2))
    return out


def computed_legend(
    width: int,
    entries: Sequence[tuple[str, tuple[int, int, int]]],
    min_alpha: float = 0.15,
    max_alpha: float = 0.95,
    footer: str = "",
) -> np.ndarray:
    """A legend strip ``width`` pixels wide for :func:`overlay_computed`: per entry
    ``(text, color)`` one row with the colour scale from "0%" (grey: not computed) through a small
    fraction to "100%", then ``text``; ``footer`` as a last line."""
    row, bar = 24, 150
    rows = len(entries) + (1 if footer else 0)
    legend = np.full((row * rows + 6, width, 3), 32, np.uint8)
    for i, (text, color) in enumerate(entries):
        y = 3 + i * row
        x = draw_label(legend, "0%", (2, y), background=None) + 2
        ramp = np.linspace(0.0, 1.0, bar, dtype=np.float32)[None].repeat(row - 8, 0)
        swatch = np.full((row - 8, bar, 3), 160, np.uint8)  # the grey of a mid-tone image
        legend[y + 4 : y + row - 4, x : x + bar] = overlay_computed(
            swatch, ramp, color, min_alpha=min_alpha, max_alpha=max_alpha
        )[:, :, :]
        x += bar + 2
        x += draw_label(legend, "100%", (x, y), background=None) + 8
        draw_label(legend, text, (x, y), background=None)
    if footer:
        draw_label(legend, footer, (2, 3 + len(entries) * row), background=None)
    return legend
