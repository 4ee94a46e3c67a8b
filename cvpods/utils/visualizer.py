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


def overlay_heatmap(
    image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, label: str = ""
) -> np.ndarray:
    """``image`` blended with ``heat`` (``[h, w]`` values in [0, 1], resized to the image) as a
    JET colour map, with an optional label in the corner."""
    heat = cv2.resize(
        heat.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST
    )
    colored = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(image, 1 - alpha, colored, alpha, 0)
    if label:
        cv2.putText(
            blended, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
        )
    return blended
