"""Dynamic-head options against expectations written here, not taken from the production code:
``MODEL.FCOS.NUM_GROUPS > 1`` gates, ``RESIZE_METHOD="nearest"`` scale fusion and Sigmoid gates
at inference.

The references follow the documented semantics (README, "The fine-grained dynamic head in
brief"): a depth cell is ``relu(x + gate * conv2(relu(conv1(x))))``, gate map ``g`` of ``G``
scales channel group ``g``; at inference ``conv2`` is computed where some gate map is non-zero
and ``conv1`` on the 3x3 neighbourhood of those positions, each GroupNorm taking its statistics
over the positions it computes; a unit costs its MACs per position, split evenly among its G
gate maps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import THIN_BACKBONE, load_experiment

from cvpods.evaluation import HeadComplexityEvaluator
from cvpods.layers import (
    CostCollector,
    DynamicDepthCell,
    DynamicHeadStage,
    HeadStage,
    SpatialGate,
)

C = 32  # the smallest width GroupNorm(32) allows
CONV_COST = (
    C * C * 9 + C
)  # MACs per position of a 3x3 C -> C conv plus its GroupNorm (1 per channel)
CLOSED, OPEN = -50.0, 50.0  # gate-conv biases: ReTanH(-50) == 0 and ReTanH(50) == 1 exactly


def set_gate(gate: SpatialGate, biases: list[float]) -> None:
    """A constant gate: zero weights, one bias per gate map."""
    with torch.no_grad():
        gate.gate_conv.weight.zero_()
        gate.gate_conv.bias.copy_(torch.tensor(biases))


def randomize_norms(module: torch.nn.Module, seed: int) -> None:
    """GroupNorm affine parameters away from 1 / 0, so that a wrong scale or shift shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen))


def group_norm_at(y: torch.Tensor, where: torch.Tensor, gn: torch.nn.GroupNorm) -> torch.Tensor:
    """``gn`` applied per image with statistics over the positions ``where [N, H, W]`` only;
    zeros elsewhere. Written out: mean and biased variance of each channel group's values."""
    n, c, h, w = y.shape
    out = torch.zeros_like(y)
    per_group = c // gn.num_groups
    for i in range(n):
        for p in range(gn.num_groups):
            channels = slice(p * per_group, (p + 1) * per_group)
            values = y[i, channels][:, where[i]]  # [C/G, P]
            if values.numel() == 0:
                continue
            mean = values.mean()
            var = ((values - mean) ** 2).mean()
            normed = (values - mean) / torch.sqrt(var + gn.eps)
            normed = normed * gn.weight[channels, None] + gn.bias[channels, None]
            block = out[i, channels]
            block[:, where[i]] = normed.to(out.dtype)
    return out


def neighbourhood(open_: torch.Tensor) -> torch.Tensor:
    """``open_ [N, H, W]`` grown by one position in each of the 8 directions."""
    n, h, w = open_.shape
    padded = torch.zeros(n, h + 2, w + 2, dtype=torch.bool)
    padded[:, 1:-1, 1:-1] = open_
    grown = torch.zeros_like(open_)
    for dy in range(3):
        for dx in range(3):
            grown |= padded[:, dy : dy + h, dx : dx + w]
    return grown


def reference_cell(cell: DynamicDepthCell, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The documented sparse depth cell for the gate maps ``gate [N, G, H, W]``."""
    conv1, conv2 = cell.bottleneck.conv1, cell.bottleneck.conv2
    open_ = (gate != 0).any(dim=1)
    y1 = F.conv2d(x, conv1.weight, padding=1)
    y1 = F.relu(group_norm_at(y1, neighbourhood(open_), conv1.norm))
    y2 = group_norm_at(F.conv2d(y1, conv2.weight, padding=1), open_, conv2.norm)
    g = gate.shape[1]
    per_map = x.shape[1] // g
    scaled = torch.cat(
        [y2[:, k * per_map : (k + 1) * per_map] * gate[:, k : k + 1] for k in range(g)], dim=1
    )
    return F.relu(x + scaled)


def dense_branch(cell: DynamicDepthCell, x: torch.Tensor) -> torch.Tensor:
    """``GN(conv2(relu(GN(conv1(x)))))`` with ordinary (whole-map) GroupNorm."""
    conv1, conv2 = cell.bottleneck.conv1, cell.bottleneck.conv2
    gn1, gn2 = conv1.norm, conv2.norm
    y = F.group_norm(F.conv2d(x, conv1.weight, padding=1), 32, gn1.weight, gn1.bias, gn1.eps)
    y = F.conv2d(F.relu(y), conv2.weight, padding=1)
    return F.group_norm(y, 32, gn2.weight, gn2.bias, gn2.eps)


# ---------------------------------------------------------------------------------------------
# NUM_GROUPS > 1


def test_two_gate_groups_one_closed_one_open():
    """G=2, gate map 0 == 0 and gate map 1 == 1 everywhere: channels 0..15 of the branch are
    dropped, channels 16..31 kept; conv2 costs half, conv1 (what conv2 reads) all of its cost."""
    torch.manual_seed(0)
    cell = DynamicDepthCell(C, num_groups=2).double()
    randomize_norms(cell, seed=1)
    set_gate(cell.gate, [CLOSED, OPEN])
    x = torch.randn(2, C, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        branch = dense_branch(cell, x)
    expected = F.relu(x + torch.cat([0 * branch[:, :16], branch[:, 16:]], dim=1))

    costs = CostCollector()
    with torch.no_grad():
        out = cell.eval()(x, costs)
        train_out = cell.train()(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(train_out, expected, rtol=1e-10, atol=1e-10)

    cost = costs.total  # of the one unit run
    positions = 6 * 7
    used = positions * CONV_COST / 2 + positions * CONV_COST  # conv2 half (1 of 2 maps), conv1
    assert cost.used.tolist() == [used, used]
    assert cost.soft.tolist() == [used, used]  # the gates are exactly 0 and 1
    assert cost.full.tolist() == [2 * positions * CONV_COST] * 2


def test_two_gate_groups_with_spatial_gates():
    """Gate maps forced by a forward hook: image 0 has map 0 open at one position (0.3) and map
    1 at two others (0.7, 1.0); image 1 has every gate closed. Expected output from the written
    reference (GroupNorm over the computed positions); costs counted by hand."""
    torch.manual_seed(0)
    cell = DynamicDepthCell(C, num_groups=2).double().eval()
    randomize_norms(cell, seed=2)
    gate = torch.zeros(2, 2, 6, 6, dtype=torch.float64)
    gate[0, 0, 1, 1] = 0.3
    gate[0, 1, 4, 3] = 0.7
    gate[0, 1, 4, 4] = 1.0
    calls = []

    def force(module, inputs, output):
        calls.append(tuple(output.shape))
        return gate

    cell.gate.register_forward_hook(force)
    x = torch.randn(2, C, 6, 6, dtype=torch.float64)
    costs = CostCollector()
    with torch.no_grad():
        out = cell(x, costs)
    assert calls == [(2, 2, 6, 6)]  # the gate module gives G=2 maps
    torch.testing.assert_close(out, reference_cell(cell, x, gate), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1], F.relu(x[1]), rtol=0, atol=0)
    # Closed positions of image 0 are the shortcut; (1, 1) keeps channels 16..31 unchanged.
    torch.testing.assert_close(out[0, :, 0, 5], F.relu(x[0, :, 0, 5]), rtol=0, atol=0)
    torch.testing.assert_close(out[0, 16:, 1, 1], F.relu(x[0, 16:, 1, 1]), rtol=0, atol=0)
    assert not torch.allclose(out[0, :16, 1, 1], F.relu(x[0, :16, 1, 1]))

    cost = costs.total  # of the one unit run
    # conv2: 3 open (map, position) pairs of CONV_COST / 2 each. conv1: the 3x3 neighbourhoods of
    # (1, 1) -> rows 0-2 x cols 0-2 (9) and of (4, 3), (4, 4) -> rows 3-5 x cols 2-5 (12).
    assert cost.used.tolist() == [3 * CONV_COST / 2 + 21 * CONV_COST, 0.0]
    # soft: gate values; conv1 takes the largest gate value in each position's neighbourhood:
    # 9 x 0.3, then col 2 sees only 0.7 (3 positions), cols 3-5 see 1.0 (9 positions).
    soft_conv1 = 9 * 0.3 + 3 * 0.7 + 9 * 1.0
    assert cost.soft.tolist() == pytest.approx(
        [(0.3 + 0.7 + 1.0) * CONV_COST / 2 + soft_conv1 * CONV_COST, 0.0], rel=1e-12
    )
    assert cost.full.tolist() == [2 * 36 * CONV_COST] * 2


def small_head_model(channels: int = 64, **fcos):
    cfg, build_model = load_experiment("fcos.res50.1x.dynamic.d4.lambda-0_1")
    overrides = {"MODEL.FPN.OUT_CHANNELS": channels, "MODEL.FCOS.NUM_CLASSES": 5}
    overrides.update({f"MODEL.FCOS.{k}": v for k, v in fcos.items()})
    cfg.merge_from_dict({**overrides, **THIN_BACKBONE})
    torch.manual_seed(0)
    return build_model(cfg)


def level_features(dtype=torch.float64) -> list[torch.Tensor]:
    """P3..P7 of a 192 x 256 input: 24x32, 12x16, 6x8, 3x4, 2x2 (1024 positions)."""
    torch.manual_seed(1)
    sizes = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    return [torch.randn(1, 64, h, w, dtype=dtype) for h, w in sizes]


def test_head_with_two_gate_groups_counts_half_units():
    """MODEL.FCOS.NUM_GROUPS=2 with every gate's map 0 closed and map 1 open: each gated unit
    costs half of its MACs, except conv1 of the depth cells (it feeds conv2 wherever any map is
    open). 2 stages x 2 branches; unit costs per position (C = 64): fusion units 2 * C * 9 + C
    each (the release's count), conv1 / conv2 C * C * 9 + C."""
    model = small_head_model(NUM_GROUPS=2, NUM_CONVS=4, GATE_ACTIVATION="ReTanH").double()
    gates = [m for m in model.head.modules() if isinstance(m, SpatialGate)]
    # Per stage: 2 fusion units + 1 depth cell; 2 stages; 2 branches.
    assert len(gates) == 12 and {g.gate_conv.out_channels for g in gates} == {2}
    for g in gates:
        set_gate(g, [CLOSED, OPEN])
    features = level_features()
    with torch.no_grad():
        dense = model.train().head(features)
        sparse = model.eval().head(features)

    positions = 24 * 32 + 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2
    fusion, conv = 2 * 64 * 9 + 64, 64 * 64 * 9 + 64
    used_per_stage = 2 * fusion / 2 + conv / 2 + conv
    full_per_stage = 2 * fusion + 2 * conv
    stages = 2 * 2
    assert sparse.cost.used.tolist() == [stages * positions * used_per_stage]
    assert sparse.cost.full.tolist() == [stages * positions * full_per_stage]
    # Every position computed: the sparse inference equals the dense training forward.
    for field in ("logits", "bbox_reg", "centerness"):
        for ours, ref in zip(getattr(sparse, field), getattr(dense, field)):
            torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# RESIZE_METHOD


X0 = torch.arange(16.0).view(1, 1, 4, 4)  # level 0 (finer)
X1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)  # level 1 (coarser)

# level 0 + level 1 brought to 4x4, and level 1 + level 0 brought to 2x2, by hand:
# nearest 2 -> 4 repeats each value twice; nearest 4 -> 2 takes rows/cols 0 and 2.
# bilinear (align_corners) 2 -> 4 samples at 0, 1/3, 2/3, 1: 1 + (2 r + c) / 3 for this X1;
# 4 -> 2 samples at 0 and 3, the corners.
EXPECTED = {
    "nearest": (
        X0 + torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4.0]]),
        torch.tensor([[1.0 + 0, 2 + 2], [3 + 8, 4 + 10]]),
    ),
    "bilinear": (
        X0 + torch.tensor([[3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 9, 10], [9, 10, 11, 12.0]]) / 3,
        torch.tensor([[1.0 + 0, 2 + 3], [3 + 12, 4 + 15]]),
    ),
}


def identity_depthwise(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1.0
        conv.bias.zero_()


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_scale_fusion_resize_by_hand(method, kind):
    """One channel, no norm, identity depthwise units, scale weights 1, the depth cell off:
    level l becomes x_l + resize(x_{l-1}) + resize(x_{l+1})."""
    if kind == "dynamic":
        fusion = DynamicHeadStage(1, resize_method=method, norm="")
        for unit in fusion.dynamic_convs:
            identity_depthwise(unit.convs[0])
            set_gate(unit.gate, [OPEN])
        set_gate(fusion.depth_module.gate, [CLOSED])
        with torch.no_grad():
            fusion.scale_weight.fill_(1.0)
    else:
        fusion = HeadStage(1, resize_method=method, norm="")
        for unit in fusion.convs:
            identity_depthwise(unit[0])
        with torch.no_grad():
            for conv in (
                fusion.depth_module.bottleneck.conv1,
                fusion.depth_module.bottleneck.conv2,
            ):
                conv.weight.zero_()
    expected0, expected1 = EXPECTED[method]
    for mode in ("train", "eval"):
        getattr(fusion, mode)()
        with torch.no_grad():
            out0, out1 = fusion([X0, X1])
        torch.testing.assert_close(out0, expected0.view(1, 1, 4, 4), rtol=0, atol=1e-6)
        torch.testing.assert_close(out1, expected1.view(1, 1, 2, 2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_head_config_selects_the_resize(method):
    """MODEL.FCOS.RESIZE_METHOD reaches every stage of the dynamic head."""
    model = small_head_model(RESIZE_METHOD=method, NUM_CONVS=4)
    up = EXPECTED[method][0].view(1, 1, 4, 4) - X0
    for stage in [*model.head.cls_subnet, *model.head.bbox_subnet]:
        torch.testing.assert_close(stage.resize(X1, (4, 4)), up, rtol=0, atol=1e-6)


def test_unknown_resize_method_is_named():
    with pytest.raises(ValueError, match="RESIZE_METHOD"):
        small_head_model(RESIZE_METHOD="bicubic")


# ---------------------------------------------------------------------------------------------
# Sigmoid gates at inference


def test_sigmoid_gated_cell_computes_everywhere_at_inference():
    """A sigmoid gate is never exactly 0: the sparse path computes every position, so the eval
    output is the dense one, ``relu(x + sigmoid(conv(x)) * branch(x))``, and used == full."""
    torch.manual_seed(0)
    cell = DynamicDepthCell(C, gate_activation="Sigmoid").double()
    randomize_norms(cell, seed=3)
    with torch.no_grad():
        cell.gate.gate_conv.weight.normal_(std=0.2)
        cell.gate.gate_conv.bias.fill_(-1.0)
    x = torch.randn(2, C, 7, 9, dtype=torch.float64)
    wg, bg = cell.gate.gate_conv.weight.detach(), cell.gate.gate_conv.bias.detach()
    gate = torch.sigmoid(F.conv2d(x, wg, bg, padding=1))
    assert float(gate.min()) < 0.05 and float(gate.max()) > 0.5  # a real spread of values
    with torch.no_grad():
        expected = F.relu(x + gate * dense_branch(cell, x))

    costs = CostCollector()
    with torch.no_grad():
        out = cell.eval()(x, costs)
        train_out = cell.train()(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, train_out, rtol=1e-10, atol=1e-10)
    cost = costs.total  # of the one unit run
    torch.testing.assert_close(cost.used, cost.full, rtol=0, atol=0)
    assert cost.full.tolist() == [2 * 63 * CONV_COST] * 2
    assert (cost.soft < cost.used).all()


def test_sigmoid_gated_head_eval_equals_train_forward():
    model = small_head_model(GATE_ACTIVATION="Sigmoid", NUM_CONVS=4).double()
    torch.manual_seed(3)
    with torch.no_grad():
        for g in model.head.modules():
            if isinstance(g, SpatialGate):
                g.gate_conv.weight.normal_(std=0.05)
                g.gate_conv.bias.fill_(-2.0)
    features = level_features()
    with torch.no_grad():
        dense = model.train().head(features)
        sparse = model.eval().head(features)
    torch.testing.assert_close(sparse.cost.used, sparse.cost.full, rtol=0, atol=0)
    assert float(sparse.cost.soft[0]) < 0.5 * float(sparse.cost.full[0])
    for field in ("logits", "bbox_reg", "centerness"):
        for ours, ref in zip(getattr(sparse, field), getattr(dense, field)):
            torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# The per-image head complexity record (GFLOPs = MACs / 2**30)


@pytest.mark.parametrize("pattern", ["open", "closed", "fusion_only"])
def test_head_complexity_record_by_hand(pattern):
    """A 96 x 128 image: P3..P7 are 12x16, 6x8, 3x4, 2x2, 1x1 = 257 positions. The D4 head (4
    stages, 2 branches, C = 64) costs per stage and position 2 fusion units of 2 * C * 9 + C
    and a depth cell of 2 convs of C * C * 9 + C. Gates all open: everything is counted; all
    closed: nothing; fusion gates open and depth-cell gates closed: only the fusion units."""
    model = small_head_model()
    assert len(model.head.cls_subnet) == len(model.head.bbox_subnet) == 4  # NUM_CONVS=8
    for module in model.head.modules():
        if isinstance(module, DynamicDepthCell):
            set_gate(module.gate, [OPEN if pattern == "open" else CLOSED])
        elif isinstance(module, DynamicHeadStage):
            for unit in module.dynamic_convs:
                set_gate(unit.gate, [CLOSED if pattern == "closed" else OPEN])
    positions = 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2 + 1
    fusion, conv = 2 * (2 * 64 * 9 + 64), 2 * (64 * 64 * 9 + 64)
    per_position = {"open": fusion + conv, "closed": 0, "fusion_only": fusion}[pattern]
    expected_macs = positions * 4 * 2 * per_position
    torch.manual_seed(5)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    model.eval()
    evaluator = HeadComplexityEvaluator()
    with torch.no_grad():
        evaluator.process([{"image": image}], model([{"image": image}]))
    summary = evaluator.evaluate()["head_complexity"]
    assert summary["num_images"] == 1
    recorded = summary["avg_gflops"]
    assert recorded == pytest.approx(expected_macs / 2**30, rel=1e-12, abs=0)


def test_the_stages_earlier_names_still_import() -> None:
    import cvpods.layers as layers

    assert layers.ScaleFusion is HeadStage and layers.DynamicScaleFusion is DynamicHeadStage
