"""Behaviour of the fine-grained dynamic head beyond the reference fixtures."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from conftest import THIN_BACKBONE, load_experiment

from cvpods.evaluation import HeadComplexityEvaluator
from cvpods.layers import CostCollector, DynamicDepthCell, SpatialGate, gate_activation
from cvpods.modeling.meta_arch.head_complexity import head_full_cost


def small_dynamic_model(name: str = "fcos.res50.1x.dynamic.d4.lambda-0_1", channels: int = 64):
    cfg, build_model = load_experiment(name)
    cfg.merge_from_dict(
        {"MODEL.FPN.OUT_CHANNELS": channels, "MODEL.FCOS.NUM_CLASSES": 5, **THIN_BACKBONE}
    )
    torch.manual_seed(0)
    return build_model(cfg)


def random_features(batch: int, channels: int = 64, size=(24, 32)) -> list[torch.Tensor]:
    h, w = size
    torch.manual_seed(1)
    feats = []
    for _ in range(5):
        feats.append(torch.randn(batch, channels, h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return feats


def make_gates_sparse(head, bias: float = 0.0) -> None:
    """Give the gates a noisy, partly closed pattern (the trained regime)."""
    torch.manual_seed(2)
    for module in head.modules():
        if isinstance(module, SpatialGate):
            module.gate_conv.weight.data.normal_(std=0.05)
            module.gate_conv.bias.data.fill_(bias)


@pytest.mark.parametrize("activation", ["ReTanH", "GeReTanH", "Sigmoid"])
def test_gate_bias_opens_gates_to_099(activation):
    kwargs = {"tau": 1.5} if activation == "GeReTanH" else {}
    gate = SpatialGate(8, activation=activation, activation_kwargs=kwargs)
    activate, _ = gate_activation(activation, kwargs)
    value = activate(gate.gate_conv.bias.detach())
    assert math.isclose(float(value), 0.99, rel_tol=1e-6)


def test_gate_activation_formulas():
    x = torch.linspace(-3, 3, 13)
    retanh, _ = gate_activation("ReTanH")
    geretanh, _ = gate_activation("GeReTanH", {"tau": 1.5})
    torch.testing.assert_close(retanh(x), torch.tanh(x).clamp(min=0))
    t = math.tanh(1.5)
    torch.testing.assert_close(geretanh(x), ((torch.tanh(x - 1.5) + t) / (1 + t)).clamp(min=0))
    assert float(geretanh(torch.tensor(1e4))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tau"):
        gate_activation("GeReTanH", {})
    with pytest.raises(ValueError, match="ReTanH"):
        gate_activation("Swish")


def test_batched_eval_equals_single_image_calls():
    model = small_dynamic_model()
    make_gates_sparse(model.head)
    model.eval()
    features = random_features(2)
    with torch.no_grad():
        batched = model.head(features)
        singles = [model.head([f[i : i + 1] for f in features]) for i in range(2)]
    assert 0 < float(batched.cost.used.sum()) < float(batched.cost.full.sum())
    for i, single in enumerate(singles):
        for field in ("logits", "bbox_reg", "centerness"):
            for ours, ref in zip(getattr(batched, field), getattr(single, field)):
                torch.testing.assert_close(ours[i : i + 1], ref, rtol=1e-4, atol=1e-5)
        for field in ("soft", "used", "full"):
            torch.testing.assert_close(
                getattr(batched.cost, field)[i : i + 1], getattr(single.cost, field)
            )


def test_closed_gates_give_the_shortcut_and_no_used_cost():
    cell = DynamicDepthCell(
        64, gate_activation="GeReTanH", gate_activation_kwargs={"tau": 1.5}
    ).eval()
    cell.gate.gate_conv.bias.data.fill_(-50.0)
    x = torch.randn(2, 64, 10, 12)
    costs = CostCollector()
    with torch.no_grad():
        out = cell(x, costs)
    cost = [costs.total]
    torch.testing.assert_close(out, torch.relu(x))
    assert float(cost[0].used.sum()) == 0.0 and float(cost[0].soft.sum()) == 0.0
    assert float(cost[0].full.sum()) > 0


def test_open_gates_give_the_dense_result():
    model = small_dynamic_model()
    for module in model.head.modules():
        if isinstance(module, SpatialGate):
            module.gate_conv.bias.data.fill_(50.0)
    features = random_features(2)
    with torch.no_grad():
        model.train()
        dense = model.head(features)
        model.eval()
        sparse = model.head(features)
    torch.testing.assert_close(sparse.cost.used, sparse.cost.full)
    for field in ("logits", "bbox_reg", "centerness"):
        for ours, ref in zip(getattr(sparse, field), getattr(dense, field)):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_budget_loss_and_complexity_record():
    model = small_dynamic_model()
    make_gates_sparse(model.head)
    images = [torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8) for _ in range(2)]
    from reference_checks import gt_instances

    inputs = [
        {
            "image": im,
            "instances": gt_instances(
                (96, 128), torch.tensor([[10.0, 12, 60, 70]]), torch.tensor([1])
            ),
        }
        for im in images
    ]
    model.train()
    losses = model(inputs)
    assert set(losses) == {
        "loss_cls", "loss_box_reg", "loss_centerness", "loss_budget", "head_cost",
    }  # fmt: skip
    assert 0 < float(losses["loss_budget"].detach()) < 0.1
    losses["loss_budget"].backward()
    gate = model.head.cls_subnet[0].depth_module.gate.gate_conv
    assert gate.weight.grad is not None and float(gate.weight.grad.abs().sum()) > 0
    # The scale-fusion gates are detached in the soft cost (as in the release).
    fusion_gate = model.head.cls_subnet[0].dynamic_convs[0].gate.gate_conv
    assert fusion_gate.weight.grad is None or float(fusion_gate.weight.grad.abs().sum()) == 0

    model.eval()
    evaluator = HeadComplexityEvaluator()
    with torch.no_grad():
        for image in images:
            evaluator.process([{"image": image}], model([{"image": image}]))
    summary = evaluator.evaluate()["head_complexity"]
    assert summary["num_images"] == 2
    assert summary["min_gflops"] <= summary["avg_gflops"] <= summary["max_gflops"]


def test_lambda_zero_has_no_budget_loss():
    model = small_dynamic_model("fcos.res50.1x.dynamic.d8.lambda-0")
    from reference_checks import gt_instances

    inputs = [
        {
            "image": torch.zeros(3, 64, 64),
            "instances": gt_instances(
                (64, 64), torch.tensor([[4.0, 4, 40, 40]]), torch.tensor([0])
            ),
        }
    ]
    model.train()
    assert "loss_budget" not in model(inputs)


@pytest.mark.parametrize(
    "name, expected_gflops",
    [("fcos.res50.1x", 98.0), ("fcos.res50.1x.fix.d4", 198.6), ("fcos.res50.1x.fix.d8", 397.2)],
)
def test_head_flops_match_the_paper(name, expected_gflops):
    cfg, build_model = load_experiment(name)
    cfg.merge_from_dict(THIN_BACKBONE)  # the head is full size; only the backbone is thin
    model = build_model(cfg)
    gflops = head_full_cost(model.head, (800, 1333), model.backbone.size_divisibility) / 2**30
    assert gflops == pytest.approx(expected_gflops, rel=0.01)


def test_gate_maps_are_outputs_on_request():
    """``model(inputs, return_gate_maps=True)``: per level the fraction of depth cells computed
    at each cell covering the (unpadded) input; absent without the request."""
    model = small_dynamic_model().eval()
    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8)
    with torch.no_grad():
        (plain,) = model([{"image": image}])
        (output,) = model([{"image": image}], return_gate_maps=True)
    assert "gate_maps" not in plain and plain["head_cost"].used.dim() == 0
    strides = model.head.fpn_strides
    maps = output["gate_maps"]
    assert [tuple(m.shape) for m in maps] == [
        (math.ceil(90 / s), math.ceil(120 / s)) for s in strides
    ]
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in maps)
    assert float(maps[0].mean()) > 0


def test_towers_side_by_side_give_the_sequential_outputs():
    """With two intra-op threads the two towers run side by side (the box tower on a helper
    thread, one intra-op thread each): outputs, costs and gate maps equal those of the towers
    run one after the other, within the rounding of a different thread count."""
    model = small_dynamic_model()
    make_gates_sparse(model.head)
    head = model.head.eval()
    features = random_features(2)
    threads_seen = {"cls": set(), "bbox": set()}
    for tower in ("cls", "bbox"):
        getattr(head, f"{tower}_subnet")[0].register_forward_hook(
            lambda module, args, out, tower=tower: threads_seen[tower].add(
                (threading.current_thread().name, torch.get_num_threads())
            )
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            head.towers_side_by_side = False
            sequential = head(features, return_gate_maps=True)
            head.towers_side_by_side = True
            side_by_side = head(features, return_gate_maps=True)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(previous)
    main = threading.current_thread().name
    assert threads_seen["cls"] == {(main, 2), (main, 1)}
    assert threads_seen["bbox"] == {(main, 2), ("cvpods-side-by-side", 1)}
    for field in ("logits", "bbox_reg", "centerness"):
        for ours, ref in zip(getattr(side_by_side, field), getattr(sequential, field)):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    for field in ("soft", "used", "full"):
        torch.testing.assert_close(
            getattr(side_by_side.cost, field), getattr(sequential.cost, field)
        )
    assert 0 < float(sequential.cost.used.sum()) < float(sequential.cost.full.sum())
    for name in ("gate_maps", "fusion_gate_maps"):
        for ours, ref in zip(getattr(side_by_side, name), getattr(sequential, name)):
            torch.testing.assert_close(ours, ref)


def test_side_by_side_raises_the_helper_threads_error():
    from cvpods.utils.parallel import run_side_by_side

    def broken() -> None:
        raise ValueError("from the helper thread")

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="from the helper thread"):
            run_side_by_side(lambda: 1, broken)
        assert torch.get_num_threads() == 2
        assert run_side_by_side(lambda: "a", lambda: "b") == ("a", "b")
    finally:
        torch.set_num_threads(previous)
