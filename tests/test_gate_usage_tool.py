"""tools/gate_usage.py: per gated unit, the share of positions its gate leaves open and its mean
gate value."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PLAYGROUND, load_tool
from test_dynamic_head_options import small_head_model

from cvpods.layers import SpatialGate


def _images(count: int) -> list[list[dict]]:
    torch.manual_seed(2)
    return [
        [{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}] for _ in range(count)
    ]


def _set_gate(gate: SpatialGate, bias: float) -> None:
    """The same gate value at every position: open for bias > 0, closed (GeReTanH 0) otherwise."""
    with torch.no_grad():
        gate.gate_conv.weight.zero_()
        gate.gate_conv.bias.fill_(bias)


def test_closed_units_count_zero_and_open_ones_count_everything():
    tool = load_tool("gate_usage")
    model = small_head_model(NUM_CONVS=4).eval()
    gates = {name: m for name, m in model.named_modules() if isinstance(m, SpatialGate)}
    # 2 stages x 2 towers, each: 2 fusion units + 1 depth cell.
    assert len(gates) == 12
    closed = ["head.cls_subnet.0.depth_module.gate", "head.bbox_subnet.1.dynamic_convs.0.gate"]
    for name, gate in gates.items():
        _set_gate(gate, -5.0 if name in closed else 5.0)
    usage, used_fraction = tool.gate_usage(model, _images(3), images=2)
    assert set(usage) == set(gates)
    open_value = (math.tanh(5.0 - 1.5) + math.tanh(1.5)) / (1 + math.tanh(1.5))  # GeReTanH(5)
    for name, unit in usage.items():
        assert unit.computed == (0.0 if name in closed else 1.0), name
        assert unit.mean_gate == pytest.approx(0.0 if name in closed else open_value), name
    # Closed: one of the 4 depth cells (24 % of this head's cost) and one fusion unit (< 0.5 %).
    assert 0.70 < used_fraction < 0.78
    assert not model.head.cls_subnet[0].depth_module.gate._forward_hooks  # hooks removed


def test_counts_are_the_same_with_the_towers_side_by_side():
    tool = load_tool("gate_usage")
    model = small_head_model(NUM_CONVS=4).eval()
    for name, module in model.named_modules():
        if isinstance(module, SpatialGate) and name.endswith("depth_module.gate"):
            with torch.no_grad():
                module.gate_conv.weight.normal_(std=0.5)  # partly open, image-dependent
    results = []
    for side_by_side in (False, True):
        model.head.towers_side_by_side = side_by_side
        results.append(tool.gate_usage(model, _images(2), images=2))
    assert results[0] == results[1]
    assert any(0.0 < unit.computed < 1.0 for unit in results[0][0].values())


def test_kinds_and_table():
    tool = load_tool("gate_usage")
    assert tool.unit_kind("head.cls_subnet.2.depth_module.gate") == "depth cell"
    assert tool.unit_kind("head.bbox_subnet.0.dynamic_convs.1.gate") == "fusion unit"
    assert tool.unit_kind("rpn.head.gate") == "gate"
    text = tool.table({"head.cls_subnet.0.depth_module.gate": tool.UnitUsage(0.25, 0.2104)}, 0.5)
    assert "| `head.cls_subnet.0.depth_module.gate` | depth cell | 25.0 % | 0.210 |" in text
    assert text.endswith("head cost computed: 50.0 % of its full cost")


def test_a_model_without_gates_is_refused(capsys):
    code = load_tool("gate_usage").main([str(PLAYGROUND / "shapes.res18.fix.d4")])
    assert code == 2
    assert "shapes.res18.fix.d4: the model has no spatial gates" in capsys.readouterr().err
