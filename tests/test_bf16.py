"""bfloat16 inference (MODEL.INFERENCE_DTYPE): the operators in bfloat16 and under autocast, the
native-bfloat16 check and its fallback, and the switch through the entry points.

Tolerances. bfloat16 keeps 8 significant bits: ``EPS = torch.finfo(torch.bfloat16).eps = 2**-7``
(one rounding errs by at most EPS / 2 relative). The references are float64 computations on the
*same bfloat16-rounded inputs*, so only the kernels' own roundings count: the GEMM (accumulated in
float32, rounded once to bfloat16), the bias add, the GroupNorm affine (statistics in float32 /
float64, the normalised value rounded once) and the gated residual: at most four roundings of
values of the output's magnitude, plus the normalisation amplifying the pre-norm roundings by
``|mean| / std`` (about 1 for these inputs). Hence ``atol = rtol = 4 * EPS`` on outputs of unit
scale (1/32; the float32 kernels pass the same comparisons at 1e-5).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import pytest
import torch
from conftest import THIN_BACKBONE, load_experiment
from test_head_ops import masked_reference as head_ops_reference

import cvpods  # noqa: F401  (registers torch.ops.cvpods)
from cvpods._extension import get_extension
from cvpods.engine import precision
from cvpods.layers import SpatialGate
from cvpods.layers.masked_conv import (
    DENSE_BREAK_EVEN_CPU,
    DENSE_BREAK_EVEN_CPU_BF16,
    DENSE_BREAK_EVEN_CPU_BF16_EMULATED,
    MaskedEpilogue,
    dense_break_even,
    masked_conv2d,
)

EPS = torch.finfo(torch.bfloat16).eps
TOL = {"atol": 4 * EPS, "rtol": 4 * EPS}
needs_extension = pytest.mark.skipif(get_extension() is None, reason="needs cvpods._C")


def bf16_round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16)


def masked_reference(x, mask, weight, bias, post, residual=None, gate=None) -> torch.Tensor:
    """The float64 reference of tests/test_head_ops.py, with this file's argument order."""
    return head_ops_reference(x, mask, weight, post, bias=bias, residual=residual, gate=gate)


def make_case(seed: int, n=2, cin=32, cout=16, h=9, w=11, density=0.4):
    """bfloat16 inputs (GN affine float32, as the model keeps it) and a random mask."""
    g = torch.Generator().manual_seed(seed)
    x = bf16_round(torch.randn(n, cin, h, w, generator=g))
    weight = bf16_round(torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5)
    bias = bf16_round(torch.randn(cout, generator=g) * 0.1)
    mask = torch.rand(n, h, w, generator=g) < density
    post = MaskedEpilogue(
        num_groups=4,
        weight=1 + 0.1 * torch.randn(cout, generator=g),
        bias=0.1 * torch.randn(cout, generator=g),
        relu=True,
    )
    residual = bf16_round(torch.randn(n, cout, h, w, generator=g))
    gate = bf16_round(torch.rand(n, 2, h, w, generator=g)) * mask[:, None]
    return x, mask, weight, bias, post, residual, gate


IMPLS = [
    pytest.param("sparse", marks=needs_extension),
    pytest.param("dense", marks=needs_extension),
    "torch",
    "auto",
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("fused_residual", [False, True])
def test_masked_conv2d_bf16_matches_the_float64_reference(impl, layout, fused_residual) -> None:
    x, mask, weight, bias, post, residual, gate = make_case(3)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    kwargs = {"residual": residual, "gate": gate} if fused_residual else {}
    with torch.no_grad():
        out = masked_conv2d(x, mask, weight, bias, 1, post, impl=impl, **kwargs)
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = masked_reference(x, mask, weight, bias, post, **kwargs)
    torch.testing.assert_close(out.double(), expected, **TOL)
    if not fused_residual:  # inactive positions are exact zeros
        assert (out.permute(0, 2, 3, 1)[~mask] == 0).all()


@needs_extension
@pytest.mark.parametrize("density", [0.0, 0.05, 1.0])
def test_masked_conv2d_bf16_edge_densities(density) -> None:
    x, mask, weight, bias, post, _, _ = make_case(5, density=density)
    with torch.no_grad():
        out = masked_conv2d(x, mask, weight, bias, 1, post)
    torch.testing.assert_close(out.double(), masked_reference(x, mask, weight, bias, post), **TOL)


@needs_extension
def test_masked_conv2d_under_autocast_runs_in_bf16_through_both_entry_points() -> None:
    """The Python wrapper and the registered operator (its AutocastCPU kernel) both cast x,
    weight, bias, residual and gate to bfloat16; without the Autocast kernel the operator failed
    (the ATen calls inside it were autocast on their own)."""
    x, mask, weight, bias, post, residual, gate = make_case(7)
    x32, w32, b32, r32, g32 = (t.float() for t in (x, weight, bias, residual, gate))
    expected = masked_reference(x, mask, weight, bias, post, residual, gate)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        wrapped = masked_conv2d(x32, mask, w32, b32, 1, post, residual=r32, gate=g32)
        for impl in ("sparse", "dense"):
            op = torch.ops.cvpods.masked_conv2d(
                x32, mask, w32, b32, 1, post.num_groups, post.weight, post.bias, post.eps,
                post.relu, r32, g32, impl, 0.85,
            )  # fmt: skip
            assert op.dtype == torch.bfloat16
            torch.testing.assert_close(op.double(), expected, **TOL)
    assert wrapped.dtype == torch.bfloat16
    torch.testing.assert_close(wrapped.double(), expected, **TOL)


@needs_extension
def test_gate_and_depthwise_operators_run_in_float32_under_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    x = bf16_round(torch.randn(2, 32, 9, 11, generator=g)).contiguous(
        memory_format=torch.channels_last
    )
    gate_w, gate_b = torch.randn(2, 32, 3, 3, generator=g), torch.randn(2, generator=g)
    dw_w, dw_b = torch.randn(32, 1, 3, 3, generator=g), torch.randn(32, generator=g)
    gn_w, gn_b = torch.ones(32), torch.zeros(32)
    gmap = torch.rand(2, 2, 9, 11, generator=g)
    x32 = x.float()
    with torch.no_grad():
        gate_ref = torch.ops.cvpods.gate_conv2d(x32, gate_w, gate_b)
        dw_ref = torch.ops.cvpods.gated_depthwise(x32, dw_w, dw_b, 8, gn_w, gn_b, 1e-5, gmap)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            gate_out = torch.ops.cvpods.gate_conv2d(x, gate_w, gate_b)
            dw_out = torch.ops.cvpods.gated_depthwise(x, dw_w, dw_b, 8, gn_w, gn_b, 1e-5, gmap)
    assert gate_out.dtype == dw_out.dtype == torch.float32
    torch.testing.assert_close(gate_out, gate_ref, rtol=0, atol=0)
    torch.testing.assert_close(dw_out, dw_ref, rtol=0, atol=0)


@needs_extension
def test_operators_pass_opcheck_in_bf16() -> None:
    x, mask, weight, bias, post, residual, gate = make_case(11)
    xc = x.contiguous(memory_format=torch.channels_last)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(
        torch.ops.cvpods.masked_conv2d.default,
        (xc, mask, weight, bias, 1, 4, post.weight, post.bias, 1e-5, True, residual, gate,
         "sparse", 0.85),
        test_utils=checks,
    )  # fmt: skip
    torch.library.opcheck(
        torch.ops.cvpods.gate_conv2d.default,
        (xc, bf16_round(torch.randn(2, 32, 3, 3)), None, True),
        test_utils=checks,
    )
    torch.library.opcheck(
        torch.ops.cvpods.gated_depthwise.default,
        (xc, bf16_round(torch.randn(32, 1, 3, 3)), None, 8, None, None, 1e-5,
         bf16_round(torch.rand(2, 1, 9, 11))),
        test_utils=checks,
    )  # fmt: skip


def test_bf16_has_its_own_break_even(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert dense_break_even(cpu, True, torch.bfloat16) == DENSE_BREAK_EVEN_CPU_BF16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    # emulated bfloat16: oneDNN's convolution is far slower than the sparse GEMM, never dense
    assert dense_break_even(cpu, True, torch.bfloat16) == DENSE_BREAK_EVEN_CPU_BF16_EMULATED > 1
    assert dense_break_even(cpu, True, torch.float32) == DENSE_BREAK_EVEN_CPU
    assert 0 < DENSE_BREAK_EVEN_CPU_BF16 <= 1


# ------------------------------------------------------------------ the native bf16 check


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())


def test_no_native_bf16_falls_back_to_float32_with_one_warning(monkeypatch, fresh_warnings):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        assert precision.resolve_inference_dtype("bfloat16", "cpu") == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second request is silent
        assert precision.resolve_inference_dtype("bf16", "cpu") == torch.float32
        assert precision.resolve_inference_dtype("float32", "cpu") == torch.float32
    with pytest.warns(RuntimeWarning, match="forced"):
        assert precision.resolve_inference_dtype("bfloat16", "cpu", force=True) == torch.bfloat16


def test_native_bf16_runs_bf16_without_warning(monkeypatch, fresh_warnings):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_inference_dtype("bfloat16", "cpu") == torch.bfloat16


def test_native_check_reads_cpu_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert "avx512_bf16" in precision._cpuinfo_flags(str(info))
    assert precision._cpuinfo_flags(str(tmp_path / "missing")) == set()
    assert isinstance(precision.cpu_has_native_bf16(), bool)


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match="MODEL.INFERENCE_DTYPE must be one of"):
        precision.inference_dtype_name("float16")


def test_flags_become_overrides_and_config_keys_exist(monkeypatch, fresh_warnings):
    from cvpods.engine.launcher import _parse

    args = _parse(["--bf16", "MODEL.WEIGHTS", "w.pth"], "cvpods_test", "", training=False)
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "MODEL.INFERENCE_DTYPE", "bfloat16"]
    args = _parse(["--bf16-force"], "cvpods_train", "")
    assert args.opts[-4:] == [
        "MODEL.INFERENCE_DTYPE", "bfloat16", "MODEL.INFERENCE_DTYPE_FORCE", "True",
    ]  # fmt: skip
    assert precision.precision_overrides(argparse.Namespace()) == []
    cfg, _ = load_experiment("shapes.res18.dynamic.d4.lambda-0_1")
    assert cfg.MODEL.INFERENCE_DTYPE == "float32" and cfg.MODEL.INFERENCE_DTYPE_FORCE is False
    cfg.merge_from_list(
        ["MODEL.INFERENCE_DTYPE", "bfloat16", "MODEL.INFERENCE_DTYPE_FORCE", "True"]
    )
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning):
        assert precision.inference_dtype(cfg) == torch.bfloat16
    assert precision.precision_record(cfg, torch.float32) == {
        "inference_dtype": "float32",
        "inference_dtype_requested": "bfloat16",
    }


def test_demo_has_the_flags():
    import importlib.util
    import pathlib
    import sys

    demo_dir = pathlib.Path(__file__).resolve().parents[1] / "demo"
    sys.path.insert(0, str(demo_dir))
    try:
        spec = importlib.util.spec_from_file_location("cvpods_demo_bf16", demo_dir / "demo.py")
        demo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo)
    finally:
        sys.path.remove(str(demo_dir))
    args = demo.parse_args(["--config", ".", "--input", "a.jpg", "--output", "o", "--bf16"])
    assert precision.precision_overrides(args) == ["MODEL.INFERENCE_DTYPE", "bfloat16"]


# ------------------------------------------------------------------ whole model


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    if dataclasses.is_dataclass(value):
        return [t for f in dataclasses.fields(value) for t in tensors_in(getattr(value, f.name))]
    return []


def small_dynamic_model():
    cfg, build_model = load_experiment("fcos.res50.1x.dynamic.d4.lambda-0_1")
    cfg.merge_from_dict(
        {"MODEL.FPN.OUT_CHANNELS": 64, "MODEL.FCOS.NUM_CLASSES": 5, "MODEL.DEVICE": "cpu",
         **THIN_BACKBONE}
    )  # fmt: skip
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_model_network_runs_in_bf16_and_the_rest_in_float32() -> None:
    model = small_dynamic_model()
    seen: dict[str, set] = {"conv": set(), "gate": set()}

    def record_conv(module, inputs, output):
        seen["conv"].add(output.dtype)

    def record_gate(module, inputs, output):
        seen["gate"].add(output.dtype)

    hooks = [
        m.register_forward_hook(record_conv)
        for m in model.backbone.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    hooks += [
        m.register_forward_hook(record_gate)
        for m in model.head.modules()
        if isinstance(m, SpatialGate)
    ]
    torch.manual_seed(3)
    image = (torch.rand(3, 96, 128) * 255).to(torch.uint8)
    batch = [{"image": image, "height": 96, "width": 128}]
    with torch.no_grad():
        ref = model(batch)[0]["instances"]
        handle = precision.apply_inference_dtype(model, torch.bfloat16, "cpu")
        assert {type(p).__name__ for p in handle.parts} >= {"FCOSDynamicHead"}
        features = model.backbone(torch.randn(1, 3, 96, 128))
        head_out = model.head([features[f] for f in model.in_features])
        out = model(batch)[0]["instances"]
        handle.remove()
        assert "forward" not in model.head.__dict__ and "forward" not in model.backbone.__dict__
    for h in hooks:
        h.remove()
    assert torch.bfloat16 in seen["conv"]
    assert seen["gate"] == {torch.float32}  # gate logits and activations stay float32
    floats = [t for t in tensors_in(head_out) if t.is_floating_point()]
    floats += [t for t in tensors_in(features) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)
    assert out.pred_boxes.tensor.dtype == torch.float32 and out.scores.dtype == torch.float32
    assert len(ref) > 0 and len(out) > 0
