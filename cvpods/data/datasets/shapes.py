"""The embedded synthetic detection dataset: coloured shapes on textured, noisy backgrounds.

Every image is a pure function of ``(seed, split, index)``, so a dataset is reproduced exactly from
its parameters. It is generated on first use under ``<dataset root>/shapes/<folder>/`` where the
folder name encodes split, image count, size range, seed and format version, e.g.
``train_n2000_256-384px_seed0_v1``. The folder holds ``images/NNNNNN.jpg`` and
``annotations.json`` (COCO instances format: XYWH boxes of the *visible* part of each shape, area
= visible pixels, ``iscrowd`` 0, category ids 1..K).

Generation writes into ``<folder>.partial/`` (each image through a temporary file and a rename)
and renames the whole folder when the annotation file is complete, so a folder with the final
name is always complete. An interrupted run leaves a ``.partial`` folder whose finished images
the next run keeps. A lock file serialises concurrent generators (e.g. several training
processes starting together).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ...utils.file_io import atomic_write, remove_temporary_files
from .paths import get_dataset_root

logger = logging.getLogger(__name__)

__all__ = [
    "SHAPE_CLASSES",
    "SHAPE_CATEGORY_IDS",
    "ShapesSpec",
    "ShapesFiles",
    "generate_shapes",
    "shapes_split_dir",
]

#: Format version: bump it whenever the generator's output changes, so old folders are not reused.
FORMAT_VERSION = 1
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ellipse", "ring")
#: COCO category id of each class (not 0-based, as in COCO).
SHAPE_CATEGORY_IDS = tuple(range(1, len(SHAPE_CLASSES) + 1))
# Base colour of each class in BGR; every shape jitters it.
_BASE_COLORS_BGR = (
    (40, 40, 220),  # circle: red
    (50, 200, 50),  # square: green
    (220, 80, 30),  # triangle: blue
    (30, 220, 230),  # star: yellow
    (210, 50, 210),  # cross: magenta
    (220, 210, 40),  # ellipse: cyan
    (20, 140, 250),  # ring: orange
)
_SPLIT_CODES = {"train": 0, "val": 1}
_MIN_OBJECT_SIZE = 10.0  # pixels: nominal extent of the smallest shape
_MAX_OBJECT_FRACTION = 0.85  # of the shorter image side: nominal extent of the largest shape
_MIN_VISIBLE_FRACTION = 0.5  # an occluded shape keeps at least this fraction of its pixels
_EMPTY_IMAGE_PROB = 0.03  # some images have no shape at all
_JPEG_QUALITY = 92


@dataclass(frozen=True)
class ShapesSpec:
    """The parameters that define one split of the shapes dataset."""

    split: str = "train"
    num_images: int = 2000
    min_size: int = 256  # each image side is drawn uniformly from [min_size, max_size] pixels
    max_size: int = 384
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in _SPLIT_CODES:
            raise ValueError(
                f"shapes split must be one of {list(_SPLIT_CODES)}, got {self.split!r}"
            )
        if self.num_images < 1:
            raise ValueError(f"shapes num_images must be >= 1, got {self.num_images}")
        if not 32 <= self.min_size <= self.max_size:
            raise ValueError(
                f"shapes image sizes need 32 <= min_size <= max_size, got {self.min_size}, "
                f"{self.max_size}"
            )
        if self.seed < 0:
            raise ValueError(f"shapes seed must be >= 0, got {self.seed}")

    @property
    def folder_name(self) -> str:
        """The folder (under the shapes root) that holds this split: every parameter and the
        format version are in its name, so a change makes a new folder."""
        return (
            f"{self.split}_n{self.num_images}_{self.min_size}-{self.max_size}px_"
            f"seed{self.seed}_v{FORMAT_VERSION}"
        )


@dataclass(frozen=True)
class ShapesFiles:
    """Where a generated split lives."""

    json_file: str
    image_root: str


def shapes_split_dir(spec: ShapesSpec, root: str) -> str:
    """The folder of ``spec``'s split under the dataset root ``root``."""
    return os.path.join(root, "shapes", spec.folder_name)


# ---------------------------------------------------------------------------------------------
# Layout: which shapes go where (cheap; needed for the annotations even when resuming)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Shape:
    class_index: int
    color: tuple[int, int, int]  # BGR
    polygons: list[np.ndarray]  # [P, 2] float vertices (x, y); the first is filled, others cut out
    x0: int  # top-left corner of the mask crop in the image
    y0: int
    mask: np.ndarray  # [h, w] bool, the shape's pixels inside the image (crop at x0, y0)
    visible: np.ndarray  # [h, w] bool, the pixels not covered by later shapes


def _regular_polygon(num: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + np.arange(num) * (2 * math.pi / num)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _unit_outline(class_index: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Vertices of a class's shape in a unit frame (extent about [-0.5, 0.5]), before rotation."""
    name = SHAPE_CLASSES[class_index]
    if name == "circle":
        return [_regular_polygon(48, 0.5, 0.0)]
    if name == "square":
        return [np.array([[-0.36, -0.36], [0.36, -0.36], [0.36, 0.36], [-0.36, 0.36]])]
    if name == "triangle":
        return [_regular_polygon(3, 0.5, -math.pi / 2)]
    if name == "star":
        outer = _regular_polygon(5, 0.5, -math.pi / 2)
        inner = _regular_polygon(5, 0.21, -math.pi / 2 + math.pi / 5)
        return [np.stack([outer, inner], axis=1).reshape(-1, 2)]
    if name == "cross":
        a, b = 0.5, 0.16
        return [
            np.array(
                [
                    [-b, -a],
                    [b, -a],
                    [b, -b],
                    [a, -b],
                    [a, b],
                    [b, b],
                    [b, a],
                    [-b, a],
                    [-b, b],
                    [-a, b],
                    [-a, -b],
                    [-b, -b],
                ]
            )  # fmt: skip
        ]
    if name == "ellipse":
        circle = _regular_polygon(48, 0.5, 0.0)
        return [circle * np.array([1.0, rng.uniform(0.35, 0.65)])]
    if name == "ring":
        return [_regular_polygon(48, 0.5, 0.0), _regular_polygon(48, rng.uniform(0.22, 0.3), 0.0)]
    raise AssertionError(name)


def _rasterize(polygons: list[np.ndarray], height: int, width: int) -> tuple[int, int, np.ndarray]:
    """``(x0, y0, mask)``: the polygons' pixels inside a ``height x width`` image, as a crop."""
    points = np.concatenate(polygons)
    x0 = max(int(math.floor(points[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(points[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(points[:, 0].max())) + 2, width)
    y1 = min(int(math.ceil(points[:, 1].max())) + 2, height)
    mask = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=np.uint8)
    if mask.size:
        shift = 4  # sub-pixel vertex precision
        for i, poly in enumerate(polygons):
            pts = np.round((poly - [x0, y0]) * (1 << shift)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1 if i == 0 else 0, lineType=cv2.LINE_8, shift=shift)
    return x0, y0, mask.astype(bool)


def _overlap(a: _Shape, b: _Shape) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices of ``a``'s and ``b``'s crops covering the intersection of the two crops, or None."""
    ax1, ay1 = a.x0 + a.mask.shape[1], a.y0 + a.mask.shape[0]
    bx1, by1 = b.x0 + b.mask.shape[1], b.y0 + b.mask.shape[0]
    x0, y0 = max(a.x0, b.x0), max(a.y0, b.y0)
    x1, y1 = min(ax1, bx1), min(ay1, by1)
    if x1 <= x0 or y1 <= y0:
        return None
    sa = (slice(y0 - a.y0, y1 - a.y0), slice(x0 - a.x0, x1 - a.x0))
    sb = (slice(y0 - b.y0, y1 - b.y0), slice(x0 - b.x0, x1 - b.x0))
    return sa, sb


def _jittered_color(class_index: int, rng: np.random.Generator) -> tuple[int, int, int]:
    base = np.array(_BASE_COLORS_BGR[class_index], dtype=np.float64)
    color = base * rng.uniform(0.75, 1.1) + rng.uniform(-25, 25, size=3)
    return tuple(int(c) for c in np.clip(color, 0, 255))


def _sample_shape(rng: np.random.Generator, height: int, width: int) -> _Shape | None:
    class_index = int(rng.integers(len(SHAPE_CLASSES)))
    max_extent = _MAX_OBJECT_FRACTION * min(height, width)
    extent = math.exp(rng.uniform(math.log(_MIN_OBJECT_SIZE), math.log(max_extent)))
    angle = rng.uniform(0, 2 * math.pi)
    # Centres keep most of a shape inside the image; large ones may be cut by the border a little.
    cx = rng.uniform(0.3 * extent, width - 0.3 * extent)
    cy = rng.uniform(0.3 * extent, height - 0.3 * extent)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    polygons = [p @ rotation.T * extent + [cx, cy] for p in _unit_outline(class_index, rng)]
    color = _jittered_color(class_index, rng)
    x0, y0, mask = _rasterize(polygons, height, width)
    if mask.sum() < 0.3 * _MIN_OBJECT_SIZE**2:
        return None
    return _Shape(class_index, color, polygons, x0, y0, mask, mask.copy())


def _try_place(shape: _Shape, placed: list[_Shape]) -> bool:
    """Put ``shape`` on top of ``placed`` unless that hides too much of an earlier shape."""
    updates = []
    for other in placed:
        slices = _overlap(other, shape)
        if slices is None:
            continue
        so, ss = slices
        covered = other.visible[so] & shape.mask[ss]
        if not covered.any():
            continue
        if other.class_index == shape.class_index:  # same colour: the boundary would be invisible
            return False
        remaining = int(other.visible.sum()) - int(covered.sum())
        if remaining < _MIN_VISIBLE_FRACTION * int(other.mask.sum()):
            return False
        updates.append((other, so, covered))
    for other, so, covered in updates:
        other.visible[so] &= ~covered
    placed.append(shape)
    return True


def _image_size(spec: ShapesSpec, rng: np.random.Generator) -> tuple[int, int]:
    height = int(rng.integers(spec.min_size, spec.max_size + 1))
    width = int(rng.integers(spec.min_size, spec.max_size + 1))
    return height, width


def _layout(spec: ShapesSpec, index: int) -> tuple[int, int, list[_Shape]]:
    """``(height, width, shapes in drawing order)`` of image ``index``."""
    rng = np.random.default_rng([spec.seed, _SPLIT_CODES[spec.split], index, 0])
    height, width = _image_size(spec, rng)
    if rng.random() < _EMPTY_IMAGE_PROB:
        return height, width, []
    target = int(rng.integers(1, 9))
    placed: list[_Shape] = []
    for _ in range(6 * target):
        if len(placed) >= target:
            break
        shape = _sample_shape(rng, height, width)
        if shape is not None:
            _try_place(shape, placed)
    return height, width, placed


def _annotations(shapes: list[_Shape]) -> list[dict]:
    """COCO annotations (without ids) of the visible part of each shape."""
    anns = []
    for shape in shapes:
        ys, xs = np.nonzero(shape.visible)
        if len(xs) == 0:
            continue
        x0, y0 = int(xs.min()) + shape.x0, int(ys.min()) + shape.y0
        w, h = int(xs.max()) - int(xs.min()) + 1, int(ys.max()) - int(ys.min()) + 1
        anns.append(
            {
                "category_id": SHAPE_CATEGORY_IDS[shape.class_index],
                "bbox": [x0, y0, w, h],
                "area": int(len(xs)),
                "iscrowd": 0,
            }
        )
    return anns


# ---------------------------------------------------------------------------------------------
# Rendering: background texture, shapes, noise (the expensive part; skipped when resuming)
# ---------------------------------------------------------------------------------------------


def _projection(height: int, width: int, angle: float) -> np.ndarray:
    """``[height, width]`` float32 coordinate of each pixel along the direction ``angle``."""
    xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(angle))
    ys = np.arange(height, dtype=np.float32) * np.float32(math.sin(angle))
    return ys[:, None] + xs[None, :]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A ``[height, width, 3]`` float32 textured, desaturated background."""
    kind = rng.integers(3)
    if kind == 0:  # smooth colour blobs
        grid = rng.uniform(40, 210, size=(int(rng.integers(2, 10)), int(rng.integers(2, 10)), 3))
        image = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # linear gradient between two colours
        c0, c1 = rng.uniform(40, 210, size=(2, 3))
        angle = rng.uniform(0, 2 * math.pi)
        t = _projection(height, width, angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        image = c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32)
    else:  # stripes
        base = rng.uniform(60, 190, size=3)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        wave = np.sin(_projection(height, width, angle) * np.float32(2 * math.pi / period))
        image = base.astype(np.float32) + wave[..., None] * np.float32(rng.uniform(8, 30))
    gray = cv2.transform(image, np.full((1, 3), 1 / 3, np.float32))  # [H, W] channel mean
    saturation = np.float32(rng.uniform(0.2, 0.6))  # desaturated: shapes stand out by colour
    return gray[..., None] + (image - gray[..., None]) * saturation


def _draw_clutter(image: np.ndarray, rng: np.random.Generator) -> None:
    """Thin random lines and small blobs that are not objects."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 5))):
        p0 = (int(rng.integers(width)), int(rng.integers(height)))
        p1 = (int(rng.integers(width)), int(rng.integers(height)))
        color = tuple(float(c) for c in rng.uniform(30, 225, size=3))
        cv2.line(image, p0, p1, color, int(rng.integers(1, 3)), lineType=cv2.LINE_AA)


def _pixel_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean noise of standard deviation ~``sigma`` (triangular: the sum of two uniform
    integers, several times cheaper to draw than Gaussian noise)."""
    k = max(int(round(sigma * 1.22)), 1)  # var of one uniform integer in [-k, k]: k (k + 1) / 3
    noise = rng.integers(-k, k + 1, size=shape, dtype=np.int16)
    noise += rng.integers(-k, k + 1, size=shape, dtype=np.int16)
    return noise.astype(np.float32)


def _render(spec: ShapesSpec, index: int, height: int, width: int, shapes: list[_Shape]) -> bytes:
    """The JPEG bytes of image ``index``."""
    rng = np.random.default_rng([spec.seed, _SPLIT_CODES[spec.split], index, 1])
    image = _background(rng, height, width)
    _draw_clutter(image, rng)
    for shape in shapes:
        h, w = shape.mask.shape
        region = image[shape.y0 : shape.y0 + h, shape.x0 : shape.x0 + w]
        # A gentle brightness ramp across the shape, so equal-coloured neighbours stay apart.
        ramp = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.15), w, dtype=np.float32)
        shaded = np.array(shape.color, np.float32) * ramp[None, :, None]  # [1, w, 3]
        region[shape.mask] = np.broadcast_to(shaded, (h, w, 3))[shape.mask]
    image += _pixel_noise(rng, image.shape, sigma=rng.uniform(3, 12))
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    ok, encoded = cv2.imencode(
        ".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
    )
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode shapes image {index}")
    return encoded.tobytes()


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, lock, resume
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed); a no-op without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock, generation is still atomic
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _image_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _generate_into(spec: ShapesSpec, folder: str) -> None:
    """Write all images (keeping finished ones) and then the annotation file into ``folder``."""
    image_dir = os.path.join(folder, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    rendered = 0
    for index in range(spec.num_images):
        height, width, shapes = _layout(spec, index)
        name = _image_name(index)
        path = os.path.join(image_dir, name)
        if not os.path.isfile(path):
            atomic_write(path, _render(spec, index, height, width, shapes))
            rendered += 1
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for ann in _annotations(shapes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    remove_temporary_files(image_dir)  # writes cut short by an interruption
    for name in os.listdir(image_dir):  # the temporary names of older versions
        if ".jpg.tmp" in name:
            os.remove(os.path.join(image_dir, name))
    if rendered < spec.num_images:
        logger.info("Resumed: kept %d images from an interrupted run", spec.num_images - rendered)
    coco = {
        "info": {
            "description": "cvpods synthetic shapes",
            "version": FORMAT_VERSION,
            **asdict(spec),
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": name, "supercategory": "shape"}
            for cid, name in zip(SHAPE_CATEGORY_IDS, SHAPE_CLASSES)
        ],
    }
    atomic_write(os.path.join(folder, "annotations.json"), json.dumps(coco).encode())


def generate_shapes(spec: ShapesSpec, root: str | os.PathLike | None = None) -> ShapesFiles:
    """Make sure ``spec``'s split exists under the dataset root; return its files.

    ``root`` defaults to :func:`~cvpods.data.datasets.paths.get_dataset_root` (``$CVPODS_DATASETS``
    or ``./datasets``).

    Nothing is done if the split is already complete. Otherwise it is generated (resuming an
    interrupted run) and moved into place atomically.
    """
    final = shapes_split_dir(spec, get_dataset_root(root))
    files = ShapesFiles(os.path.join(final, "annotations.json"), os.path.join(final, "images"))
    if os.path.isfile(files.json_file):
        return files
    os.makedirs(os.path.dirname(final), exist_ok=True)
    with _exclusive_lock(final + ".lock"):
        if os.path.isfile(files.json_file):  # another process finished it while we waited
            return files
        if os.path.exists(final):
            raise RuntimeError(
                f"{final} exists but has no annotations.json; it was not made by this generator "
                "(which only ever renames complete folders into place). Delete it and retry."
            )
        partial = final + ".partial"
        start = time.perf_counter()
        logger.info("Generating %d shapes images into %s", spec.num_images, final)
        _generate_into(spec, partial)
        os.replace(partial, final)
        logger.info("Generated %s in %.1f s", final, time.perf_counter() - start)
    return files
