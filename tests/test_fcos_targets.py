"""Hand-computed FCOS target assignment and head output paths (independent expectations)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import THIN_BACKBONE, load_experiment
from reference_checks import gt_instances


def fcos_model(**overrides):
    cfg, build_model = load_experiment("fcos.res50.1x")
    cfg.merge_from_dict(
        {"MODEL.FPN.OUT_CHANNELS": 32, "MODEL.FCOS.NUM_CLASSES": 3, **THIN_BACKBONE, **overrides}
    )
    torch.manual_seed(0)
    return build_model(cfg)


BG = 3  # background class id (NUM_CLASSES)


def assign(model, level_points, boxes, classes):
    shifts = [[torch.tensor(p, dtype=torch.float32).reshape(-1, 2) for p in level_points]]
    target = gt_instances(
        (256, 256), torch.tensor(boxes, dtype=torch.float32), torch.tensor(classes)
    )
    gt_classes, deltas, centerness = model.get_ground_truth(shifts, [target])
    return gt_classes[0].tolist(), deltas[0], centerness[0]


def test_radius_zero_whole_box_and_inclusive_size_ranges():
    model = fcos_model(**{"MODEL.FCOS.CENTER_SAMPLING_RADIUS": 0.0})
    # Level 0 covers max(l,t,r,b) in [-1, 64], level 1 [64, 128] (both ends inclusive).
    level0 = [[64, 64], [32, 64], [0, 64], [130, 10]]
    level1 = [[64, 64], [32, 64]]
    classes, deltas, centerness = assign(model, [level0, level1], [[0, 0, 128, 128]], [1])
    # (64,64): l=t=r=b=64 -> in both ranges. (32,64): max 96 -> level 1 only.
    # (0,64): l=0 is not inside (strictly positive distances). (130,10): outside.
    assert classes == [1, BG, BG, BG, 1, 1]
    torch.testing.assert_close(deltas[0], torch.tensor([64.0, 64.0, 64.0, 64.0]))
    torch.testing.assert_close(deltas[5], torch.tensor([32.0, 64.0, 96.0, 64.0]))
    # centerness = sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) = sqrt(32/96 * 1).
    assert float(centerness[5]) == pytest.approx(math.sqrt(1 / 3))
    assert float(centerness[0]) == pytest.approx(1.0)


def test_smallest_box_wins():
    model = fcos_model(**{"MODEL.FCOS.CENTER_SAMPLING_RADIUS": 0.0})
    boxes = [[0, 0, 100, 100], [40, 40, 60, 60]]
    # (50,50) and (45,50) lie in both boxes (both within level 0's size range): the smaller
    # box B wins. (50,38) lies in A only (distances 50, 38, 50, 62: max 62 <= 64).
    classes, deltas, centerness = assign(model, [[[50, 50], [45, 50], [50, 38]]], boxes, [0, 2])
    assert classes == [2, 2, 0]
    torch.testing.assert_close(deltas[1], torch.tensor([5.0, 10.0, 15.0, 10.0]))
    torch.testing.assert_close(deltas[2], torch.tensor([50.0, 38.0, 50.0, 62.0]))
    assert float(centerness[1]) == pytest.approx(math.sqrt(5 / 15))
    assert float(centerness[2]) == pytest.approx(math.sqrt(38 / 62))


def test_centre_sampling_radius_limits_foreground():
    # Radius 1.5 at stride 8: only strictly inside (38, 38, 62, 62), 12 px around the centre.
    # All four points are within level 0's size range (max distance <= 63).
    model = fcos_model(**{"MODEL.FCOS.CENTER_SAMPLING_RADIUS": 1.5})
    points = [[50, 50], [61, 50], [63, 50], [37, 50]]
    classes, _, _ = assign(model, [points], [[0, 0, 100, 100]], [1])
    assert classes == [1, 1, BG, BG]
    model = fcos_model(**{"MODEL.FCOS.CENTER_SAMPLING_RADIUS": 0.0})
    classes, _, _ = assign(model, [points], [[0, 0, 100, 100]], [1])
    assert classes == [1, 1, 1, 1]


def _features(model, batch=1, size=32):
    channels = model.head.cls_score.in_channels
    sizes = [size, size // 2, size // 4, size // 8, size // 16]
    torch.manual_seed(1)
    return [torch.randn(batch, channels, s, s) for s in sizes]


@pytest.mark.parametrize("norm_reg_targets", [False, True])
def test_regression_output_exp_or_relu_times_stride(norm_reg_targets):
    """Default head path: NORM_REG_TARGETS=False regresses exp(scale * x); True relu(scale*x)*stride.
    With a zero regression conv and bias b, every location gives exactly that of b."""
    model = fcos_model(**{"MODEL.FCOS.NORM_REG_TARGETS": norm_reg_targets}).eval()
    head = model.head
    with torch.no_grad():
        head.bbox_pred.weight.zero_()
        head.bbox_pred.bias.copy_(torch.tensor([0.5, -0.25, 1.0, 0.0]))
        for i, scale in enumerate(head.scales):
            scale.scale.fill_(1.0 + i)
        outputs = head(_features(model))
    for level, (reg, stride) in enumerate(zip(outputs.bbox_reg, [8, 16, 32, 64, 128])):
        x = torch.tensor([0.5, -0.25, 1.0, 0.0]) * (1.0 + level)
        expected = torch.relu(x) * stride if norm_reg_targets else torch.exp(x)
        torch.testing.assert_close(reg[0, :, 0, 0], expected)
        assert bool((reg == expected[None, :, None, None]).all())


@pytest.mark.parametrize("on_reg", [False, True])
def test_centerness_branch(on_reg):
    """CENTERNESS_ON_REG=False: centerness follows the classification tower only; True: the
    regression tower only."""
    model = fcos_model(**{"MODEL.FCOS.CENTERNESS_ON_REG": on_reg}).eval()
    features = _features(model)
    with torch.no_grad():
        before = model.head(features).centerness[0].clone()
        for p in model.head.bbox_subnet.parameters():
            p.add_(0.5)
        after_reg = model.head(features).centerness[0].clone()
        for p in model.head.cls_subnet.parameters():
            p.add_(0.5)
        after_cls = model.head(features).centerness[0]
    if on_reg:
        assert not torch.allclose(before, after_reg) and torch.equal(after_reg, after_cls)
    else:
        assert torch.equal(before, after_reg) and not torch.allclose(after_reg, after_cls)
