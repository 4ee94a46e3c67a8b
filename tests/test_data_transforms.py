"""Transforms: boxes follow the image (flip, resize); pipelines are built from config lists."""

from __future__ import annotations

import numpy as np
import pytest

from cvpods.data.transforms import (
    TRANSFORMS,
    HFlipTransform,
    NoOpTransform,
    RandomBrightness,
    RandomContrast,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    VFlipTransform,
    apply_augmentations,
    build_augmentations,
)


def _image_with_box(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A black ``h x w`` image with the pixels of the XYXY box (pixel-edge coordinates) white."""
    image = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    return image


def _bright_box(image: np.ndarray) -> list[float]:
    """XYXY pixel-edge box of the pixels brighter than half."""
    ys, xs = np.nonzero(image[..., 0] > 127)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_hflip_moves_image_and_box_together():
    box = (10, 5, 30, 15)
    image = _image_with_box(40, 100, box)
    t = HFlipTransform(100)
    moved = t.apply_box(np.array([box], float))
    assert moved.tolist() == [[70, 5, 90, 15]]
    assert _bright_box(t.apply_image(image)) == moved[0].tolist()


def test_vflip_moves_image_and_box_together():
    box = (10, 5, 30, 15)
    image = _image_with_box(40, 100, box)
    t = VFlipTransform(40)
    moved = t.apply_box(np.array([box], float))
    assert moved.tolist() == [[10, 25, 30, 35]]
    assert _bright_box(t.apply_image(image)) == moved[0].tolist()


def test_resize_scales_image_and_box():
    box = (8, 4, 24, 20)
    image = _image_with_box(40, 60, box)
    t = ResizeTransform(40, 60, 80, 90, interp=0)  # nearest: the box edges stay sharp
    moved = t.apply_box(np.array([box], float))
    np.testing.assert_allclose(moved, [[12, 8, 36, 40]])
    resized = t.apply_image(image)
    assert resized.shape == (80, 90, 3)
    np.testing.assert_allclose(_bright_box(resized), moved[0], atol=1)


def test_resize_shortest_edge_sizes():
    assert ResizeShortestEdge.output_size(300, 400, 600, 1000) == (600, 800)
    assert ResizeShortestEdge.output_size(300, 900, 600, 1000) == (333, 1000)  # capped long side
    rng = np.random.default_rng(0)
    image = np.zeros((100, 200, 3), np.uint8)
    choice = ResizeShortestEdge((50, 80), max_size=1000, sample_style="choice")
    assert {choice.get_transform(image, rng).new_h for _ in range(50)} == {50, 80}
    ranged = ResizeShortestEdge((50, 60), max_size=1000, sample_style="range")
    heights = {ranged.get_transform(image, rng).new_h for _ in range(200)}
    assert heights <= set(range(50, 61)) and len(heights) > 5
    assert isinstance(ResizeShortestEdge(100, sample_style="choice").get_transform(image, rng),
                      NoOpTransform)  # fmt: skip


def test_pipeline_from_config_moves_boxes_with_the_image():
    pipeline = [
        ("ResizeShortestEdge", dict(short_edge_length=(80,), max_size=1000, sample_style="choice")),
        ("RandomFlip", dict(prob=1.0)),
    ]
    augs = build_augmentations(pipeline)
    box = (10, 4, 30, 20)
    image = _image_with_box(40, 60, box)
    out, transform = apply_augmentations(augs, image, np.random.default_rng(0))
    assert out.shape == (80, 120, 3)
    moved = transform.apply_box(np.array([box], float))
    np.testing.assert_allclose(moved, [[60, 8, 100, 40]])
    np.testing.assert_allclose(_bright_box(out), moved[0], atol=1)


def test_random_flip_probability_and_direction():
    image = np.zeros((10, 20, 3), np.uint8)
    rng = np.random.default_rng(0)
    flips = [RandomFlip().get_transform(image, rng) for _ in range(400)]
    share = np.mean([isinstance(t, HFlipTransform) for t in flips])
    assert 0.4 < share < 0.6
    assert isinstance(RandomFlip(prob=1.0, horizontal=False, vertical=True).get_transform(image, rng),
                      VFlipTransform)  # fmt: skip
    with pytest.raises(ValueError, match="exactly one"):
        RandomFlip(horizontal=True, vertical=True)


def test_photometric_transforms_change_pixels_not_boxes():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(50, 200, size=(16, 16, 3)).astype(np.uint8)
    boxes = np.array([[1.0, 2.0, 5.0, 9.0]])
    for aug in (RandomBrightness(1.3, 1.3), RandomContrast(0.5, 0.5)):
        t = aug.get_transform(image, rng)
        out = t.apply_image(image)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert not np.array_equal(out, image)
        assert np.array_equal(t.apply_box(boxes), boxes)
    brighter = RandomBrightness(2.0, 2.0).get_transform(image, rng).apply_image(image)
    assert brighter.max() == 255  # clipped, not wrapped around


def test_unknown_transform_lists_valid_names():
    with pytest.raises(KeyError) as info:
        build_augmentations([("RandomFlipp", dict())])
    for name in ("ResizeShortestEdge", "RandomFlip", "RandomBrightness"):
        assert name in str(info.value)
    assert set(TRANSFORMS) >= {"ResizeShortestEdge", "RandomFlip", "RandomContrast", "Resize"}


def test_bad_transform_arguments_are_explained():
    with pytest.raises(TypeError, match="ResizeShortestEdge.*short_edge"):
        build_augmentations([("ResizeShortestEdge", dict(short_side=800))])
    with pytest.raises(ValueError, match="sample_style"):
        build_augmentations([("ResizeShortestEdge", dict(short_edge_length=8, sample_style="x"))])
    with pytest.raises(ValueError, match="pair"):
        build_augmentations(["RandomFlip"])
