"""Faster R-CNN building blocks against hand-computed values, images without boxes, and the
deep / fine-grained dynamic RPN heads."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import THIN_BACKBONE, load_experiment
from reference_checks import gt_instances

from cvpods.engine.train_loop import loss_tensors
from cvpods.evaluation import HeadComplexityEvaluator
from cvpods.layers import GateCost, SpatialGate
from cvpods.modeling.anchor_generator import (
    DefaultAnchorGenerator,
    generate_cell_anchors,
    grid_anchors,
)
from cvpods.modeling.box_regression import Box2BoxTransform
from cvpods.modeling.matcher import Matcher
from cvpods.modeling.poolers import assign_boxes_to_levels
from cvpods.modeling.proposal_generator import DynamicRPNHead, FixRPNHead, StandardRPNHead
from cvpods.modeling.sampling import subsample_labels
from cvpods.structures import Boxes

BASELINE = "faster_rcnn.res50.fpn.coco.multiscale.1x"
DYNAMIC = "faster_rcnn.res50.fpn.1x.dynamic_rpn.d4.lambda-0_1"
FIX = "faster_rcnn.res50.fpn.1x.fix_rpn.d4"


def thin_model(name: str, **overrides):
    cfg, build_model = load_experiment(name)
    cfg.merge_from_dict(
        {
            "MODEL.DEVICE": "cpu",
            "MODEL.WEIGHTS": "",
            "MODEL.FPN.OUT_CHANNELS": 32,
            "MODEL.ROI_HEADS.NUM_CLASSES": 3,
            "MODEL.ROI_BOX_HEAD.FC_DIM": 32,
            "MODEL.PIXEL_STD": [57.375, 57.12, 58.395],
            **THIN_BACKBONE,
            **overrides,
        }
    )
    torch.manual_seed(0)
    return build_model(cfg)


def images_with_and_without_boxes(empty: tuple[bool, ...] = (False, True)) -> list[dict]:
    torch.manual_seed(3)
    out = []
    for is_empty in empty:
        image = torch.rand(3, 96, 128) * 255
        if is_empty:
            boxes, classes = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
        else:
            boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0]])
            classes = torch.tensor([0, 2])
        out.append({"image": image, "instances": gt_instances((96, 128), boxes, classes)})
    return out


# ---------------------------------------------------------------- anchors


def test_cell_anchors_hand_computed():
    anchors = generate_cell_anchors([32], [0.5, 1.0, 2.0])
    s = math.sqrt(2048) / 2  # w/2 for aspect ratio 0.5 (h = w / 2); h/2 for ratio 2
    expected = torch.tensor(
        [[-s, -s / 2, s, s / 2], [-16.0, -16.0, 16.0, 16.0], [-s / 2, -s, s / 2, s]]
    )
    torch.testing.assert_close(anchors, expected)
    two_sizes = generate_cell_anchors([8, 16], [1.0])
    torch.testing.assert_close(two_sizes, torch.tensor([[-4.0, -4, 4, 4], [-8.0, -8, 8, 8]]))


def test_grid_anchors_row_major_cells_with_offset():
    cell = torch.tensor([[-1.0, -1.0, 1.0, 1.0], [-2.0, -2.0, 2.0, 2.0]])
    anchors = grid_anchors(cell, (2, 3), stride=4, offset=0.0)
    assert anchors.shape == (2 * 3 * 2, 4)
    # cell (row 0, col 1): centre (4, 0); its two anchors are consecutive
    torch.testing.assert_close(anchors[2], torch.tensor([3.0, -1.0, 5.0, 1.0]))
    torch.testing.assert_close(anchors[3], torch.tensor([2.0, -2.0, 6.0, 2.0]))
    # cell (row 1, col 0): centre (0, 4)
    torch.testing.assert_close(anchors[6], torch.tensor([-1.0, 3.0, 1.0, 5.0]))
    shifted = grid_anchors(cell, (2, 3), stride=4, offset=0.5)
    torch.testing.assert_close(shifted - anchors, torch.full_like(anchors, 2.0))


def test_anchor_generator_levels_and_state_dict_names():
    generator = DefaultAnchorGenerator([[32], [64]], [[0.5, 1.0, 2.0]], strides=[4, 8])
    assert sorted(generator.state_dict()) == ["cell_anchors.0", "cell_anchors.1"]
    assert generator.num_cell_anchors == [3, 3]
    features = [torch.zeros(1, 1, 5, 7), torch.zeros(1, 1, 3, 4)]
    per_level = generator(features)
    assert [len(b) for b in per_level] == [5 * 7 * 3, 3 * 4 * 3]
    # the square anchor of the last cell of level 1: centre (3 * 8, 2 * 8), side 64
    torch.testing.assert_close(
        per_level[1].tensor[-2], torch.tensor([24.0 - 32, 16.0 - 32, 24.0 + 32, 16.0 + 32])
    )
    with pytest.raises(ValueError, match="SIZES"):
        DefaultAnchorGenerator([[32], [64], [128]], [[1.0]], strides=[4, 8])


# ---------------------------------------------------------------- matcher and sampling


def test_matcher_thresholds_labels_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.1, 0.7], [0.1, 0.65, 0.25, 0.0, 0.3]])
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1])(iou)
    assert matches.tolist() == [0, 1, 1, 0, 0]
    # 0.7 and 0.3 belong to the upper interval
    assert labels.tolist() == [1, -1, 0, 0, 1]
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    # prediction 1 is ground truth 1's best (0.65): promoted to foreground
    assert labels.tolist() == [1, 1, 0, 0, 1]
    assert labels.dtype == torch.int8
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(0, 3))
    assert matches.tolist() == [0, 0, 0] and labels.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="IOU_LABELS"):
        Matcher([0.3, 0.7], [0, 1])


def test_low_quality_matches_include_ties():
    iou = torch.tensor([[0.4, 0.4, 0.1]])
    _, labels = Matcher([0.5], [0, 1], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 1, 0]


def test_subsample_labels_budget_and_fraction():
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, -1, -1])
    torch.manual_seed(0)
    pos, neg = subsample_labels(labels, num_samples=6, positive_fraction=0.25, bg_label=0)
    assert len(pos) == 1 and len(neg) == 5  # int(6 * 0.25) = 1 positive, the rest background
    assert set(pos.tolist()) <= {0, 1, 2, 3} and set(neg.tolist()) <= {4, 5, 6, 7, 8, 9}
    pos, neg = subsample_labels(torch.tensor([0, 0, -1]), 8, 0.5, 0)
    assert len(pos) == 0 and sorted(neg.tolist()) == [0, 1]


# ---------------------------------------------------------------- box coder and pooler


def test_box_coder_hand_computed_and_round_trip():
    src = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    tgt = torch.tensor([[5.0, 5.0, 25.0, 25.0]])
    # centres (5, 10) -> (15, 15), sizes (10, 20) -> (20, 20)
    plain = Box2BoxTransform((1.0, 1.0, 1.0, 1.0)).get_deltas(src, tgt)
    torch.testing.assert_close(plain, torch.tensor([[1.0, 0.25, math.log(2.0), 0.0]]))
    coder = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    deltas = coder.get_deltas(src, tgt)
    torch.testing.assert_close(deltas, torch.tensor([[10.0, 2.5, 5 * math.log(2.0), 0.0]]))
    torch.testing.assert_close(coder.apply_deltas(deltas, src), tgt)
    # per-class deltas [R, 4K] decode to [R, 4K]
    two = coder.apply_deltas(torch.cat([deltas, torch.zeros(1, 4)], dim=1), src)
    torch.testing.assert_close(two, torch.cat([tgt, src], dim=1))


def test_box_coder_clamps_growth():
    coder = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = coder.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), box)
    torch.testing.assert_close(out, torch.tensor([[8.0 - 500, 8.0 - 500, 8.0 + 500, 8.0 + 500]]))


def test_pooler_level_assignment_follows_fpn_eq1():
    # sqrt(area) 224 -> level 4; 112 -> 3; 448 -> 5; tiny -> clamped to 2; huge -> 5
    boxes = Boxes(
        torch.tensor(
            [
                [0, 0, 224, 224],
                [0, 0, 112, 112],
                [0, 0, 448, 448],
                [0, 0, 4, 4],
                [0, 0, 2000, 2000.0],
            ]
        )
    )
    levels = assign_boxes_to_levels([boxes], 2, 5, 224, 4)
    assert levels.tolist() == [2, 1, 3, 0, 3]


# ---------------------------------------------------------------- images without boxes


@pytest.mark.parametrize("empty", [(True,), (False, True)])
def test_losses_on_images_without_boxes(empty):
    model = thin_model(BASELINE)
    model.train()
    losses = model(images_with_and_without_boxes(empty))
    sum(losses.values()).backward()
    losses = {k: v.detach() for k, v in losses.items()}
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    if all(empty):
        assert float(losses["loss_box_reg"]) == 0.0
        assert float(losses["loss_rpn_loc"]) == 0.0
    assert float(losses["loss_cls"]) > 0 and float(losses["loss_rpn_cls"]) > 0
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None


def test_rpn_labels_every_anchor_background_without_boxes():
    model = thin_model(BASELINE)
    inputs = images_with_and_without_boxes((True,))
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    rpn = model.proposal_generator
    anchors = rpn.anchor_generator([features[f] for f in rpn.in_features])
    from cvpods.modeling.proposal_generator.rpn_outputs import label_anchors

    labels, deltas = label_anchors(
        Boxes.cat(anchors),
        [x["instances"] for x in inputs],
        images.image_sizes,
        rpn.anchor_matcher,
        rpn.box2box_transform,
    )
    assert labels.unique().tolist() == [0]
    assert float(deltas.abs().sum()) == 0.0


def test_eval_returns_rescaled_detections():
    model = thin_model(BASELINE).eval()
    inputs = images_with_and_without_boxes((False,))
    inputs[0].update(height=192, width=256)
    with torch.no_grad():
        result = model(inputs)[0]["instances"]
    assert result.image_size == (192, 256)
    assert len(result) <= 100
    if len(result):
        assert float(result.pred_boxes.tensor[:, 2].max()) <= 256


# ---------------------------------------------------------------- deep and dynamic RPN heads


def test_rpn_head_names_select_the_heads():
    assert isinstance(thin_model(BASELINE).proposal_generator.rpn_head, StandardRPNHead)
    fix = thin_model(FIX).proposal_generator.rpn_head
    dyn = thin_model(DYNAMIC).proposal_generator.rpn_head
    assert isinstance(fix, FixRPNHead) and isinstance(dyn, DynamicRPNHead)
    assert len(fix.subnet) == len(dyn.subnet) == 4  # D4: NUM_CONVS 8
    with pytest.raises(ValueError, match="HEAD_NAME"):
        thin_model(BASELINE, **{"MODEL.RPN.HEAD_NAME": "NoSuchHead"})
    with pytest.raises(ValueError, match="NUM_CONVS"):
        thin_model(DYNAMIC, **{"MODEL.RPN.NUM_CONVS": 3})


def test_fix_and_dynamic_rpn_heads_share_the_topology():
    fix = thin_model(FIX).proposal_generator.rpn_head
    dyn = thin_model(DYNAMIC).proposal_generator.rpn_head
    assert fix.cost_per_position() == dyn.cost_per_position()
    assert sum(p.numel() for p in fix.parameters()) < sum(p.numel() for p in dyn.parameters())


def test_dynamic_rpn_training_has_budget_loss_and_gradients():
    model = thin_model(DYNAMIC).train()
    outputs = model(images_with_and_without_boxes())
    assert set(outputs) == {
        "loss_cls",
        "loss_box_reg",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_budget",
        "head_cost",
    }
    assert isinstance(outputs["head_cost"], GateCost) and outputs["head_cost"].used.shape == (2,)
    losses = loss_tensors(outputs)
    # every gate starts open at 0.99 (soft cost ~0.99 of full): lambda 0.1 x ~0.99
    sum(losses.values()).backward()
    assert 0.05 < float(losses["loss_budget"].detach()) <= 0.1
    gates = [m for m in model.proposal_generator.rpn_head.modules() if isinstance(m, SpatialGate)]
    assert gates and all(g.gate_conv.weight.grad is not None for g in gates)


def test_dynamic_rpn_eval_records_head_cost():
    model = thin_model(DYNAMIC).eval()
    inputs = images_with_and_without_boxes()
    with torch.no_grad():
        outputs = model(inputs)
    evaluator = HeadComplexityEvaluator()
    evaluator.process(inputs, outputs)
    summary = evaluator.evaluate()["head_complexity"]
    assert summary["num_images"] == 2 and summary["avg_gflops"] > 0
    for output in outputs:
        cost = output["head_cost"]
        assert cost.used.dim() == 0
        assert torch.all(cost.used <= cost.full) and torch.all(cost.soft <= cost.full)


def _binary_gates(head, pattern: bool) -> None:
    """Gates of exactly 0 or 1: a steep gate conv on channel 0 (``pattern``) or all open."""
    for module in head.modules():
        if isinstance(module, SpatialGate):
            module.gate_conv.weight.data.zero_()
            module.gate_conv.bias.data.fill_(0.0 if pattern else 50.0)
            if pattern:
                module.gate_conv.weight.data[:, 0, 1, 1] = 1e6


@pytest.mark.parametrize(
    "norm, pattern", [("GN", False), ("", True)], ids=["GN-all-open", "no-norm-mixed"]
)
def test_sparse_dynamic_rpn_inference_equals_dense_with_binary_gates(norm, pattern):
    """Evaluation runs the gated depth cells through the masked convolution; with binary gates it
    equals the dense training-mode computation. (With GroupNorm and partly closed gates the two
    differ by design: the sparse path takes GN statistics over the computed positions only.)"""
    model = thin_model(DYNAMIC, **{"MODEL.RPN.NORM": norm})
    head = model.proposal_generator.rpn_head
    _binary_gates(head, pattern)
    torch.manual_seed(5)
    features = [torch.randn(2, 32, 24 // 2**i + 1, 32 // 2**i + 1) for i in range(5)]
    seen = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
        for m in head.modules()
        if isinstance(m, SpatialGate)
    ]
    with torch.no_grad():
        head.train()
        dense = head(features)
        head.eval()
        sparse = head(features)
    for hook in hooks:
        hook.remove()
    values = torch.cat([g.flatten() for g in seen])
    assert bool(((values == 0) | (values == 1)).all()), "gates are not binary"
    if pattern:
        assert 0 < float(sparse.cost.used.sum()) < float(sparse.cost.full.sum())
    for field in ("objectness_logits", "anchor_deltas"):
        for ours, ref in zip(getattr(sparse, field), getattr(dense, field)):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    for field in ("soft", "used", "full"):
        torch.testing.assert_close(getattr(sparse.cost, field), getattr(dense.cost, field))
