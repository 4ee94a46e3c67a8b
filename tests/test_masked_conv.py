"""Masked convolution: every implementation equals dense conv -> mask -> GN-over-active -> ReLU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvpods._extension import get_extension
from cvpods.layers.masked_conv import MaskedConv2d, MaskedEpilogue, masked_conv2d

EXT = get_extension()
needs_ext = pytest.mark.skipif(EXT is None, reason="cvpods._C is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

IMPLS = ["torch", "dense", pytest.param("sparse", marks=needs_ext), "auto"]


def reference(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    post: MaskedEpilogue,
) -> torch.Tensor:
    """Dense convolution, then per image: GroupNorm of the [1, Cout, P] active columns, ReLU."""
    y = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(),
                 padding=weight.shape[2] // 2)  # fmt: skip
    out = torch.zeros_like(y)
    for i in range(x.shape[0]):
        idx = (mask[i] > 0).reshape(-1).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        cols = y[i].reshape(y.shape[1], -1)[:, idx][None]
        if post.num_groups:
            w = None if post.weight is None else post.weight.double()
            b = None if post.bias is None else post.bias.double()
            cols = F.group_norm(cols, post.num_groups, w, b, post.eps)
        if post.relu:
            cols = F.relu(cols)
        out[i].view(y.shape[1], -1)[:, idx] = cols[0]
    return out


def object_mask(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A few random ellipses per image, bool [n, h, w]."""
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None]
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        for _ in range(3):
            cy, cx, ry, rx = (
                torch.rand(4, generator=gen) * torch.tensor([h, w, h / 3, w / 3])
            ).tolist()
            masks[i] |= ((ys - cy) / (ry + 1)) ** 2 + ((xs - cx) / (rx + 1)) ** 2 <= 1
    return masks


def make_case(n, cin, cout, k, groups, seed, dtype=torch.float32, with_bias=True, relu=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, 9, 13, generator=gen, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, generator=gen, dtype=dtype) / (cin * k * k) ** 0.5
    bias = torch.randn(cout, generator=gen, dtype=dtype) if with_bias else None
    post = MaskedEpilogue(
        num_groups=groups,
        weight=torch.randn(cout, generator=gen, dtype=dtype) if groups else None,
        bias=torch.randn(cout, generator=gen, dtype=dtype) if groups else None,
        relu=relu,
    )
    return x, weight, bias, post, gen


def check(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, tol: float) -> None:
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    inactive = ~(mask > 0)[:, None].expand_as(out)
    assert (out[inactive] == 0).all(), "inactive positions must be exact zeros"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize(
    "n,cin,cout,groups", [(1, 8, 16, 4), (3, 5, 12, 3), (3, 16, 10, 0), (1, 3, 32, 32)]
)
@pytest.mark.parametrize("mask_kind", ["random", "object"])
def test_matches_dense_reference(impl, k, n, cin, cout, groups, mask_kind):
    x, weight, bias, post, gen = make_case(n, cin, cout, k, groups, seed=k * 100 + cin)
    if mask_kind == "random":
        mask = torch.rand(n, 9, 13, generator=gen) > 0.6
    else:
        mask = object_mask(n, 9, 13, gen)
    with torch.no_grad():
        out = masked_conv2d(x, mask, weight, bias, k // 2, post, impl=impl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    check(out, reference(x, mask, weight, bias, post), mask, 1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_full_and_mixed_masks(impl):
    x, weight, bias, post, _ = make_case(3, 6, 8, 3, 2, seed=7)
    mask = torch.zeros(3, 9, 13)
    mask[1] = 1.0  # image 0 empty, image 1 full, image 2 two positions (float mask)
    mask[2, 0, 0] = 0.5
    mask[2, 8, 12] = 2.0
    with torch.no_grad():
        out = masked_conv2d(x, mask, weight, bias, 1, post, impl=impl)
        check(out, reference(x, mask, weight, bias, post), mask, 1e-4)
        assert (out[0] == 0).all()
        empty = masked_conv2d(
            x, torch.zeros(3, 9, 13, dtype=torch.bool), weight, bias, 1, post, impl=impl
        )
        assert (empty == 0).all() and empty.shape == (3, 8, 9, 13)
        full = torch.ones(3, 9, 13, dtype=torch.bool)
        check(masked_conv2d(x, full, weight, bias, 1, post, impl=impl),
              reference(x, full, weight, bias, post), full, 1e-4)  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
def test_non_contiguous_inputs(impl, layout):
    x, weight, bias, post, gen = make_case(2, 8, 8, 3, 4, seed=3)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.cat([x, x], dim=1)[:, ::2]
    else:
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    mask = torch.rand(2, 9, 13, generator=gen) > 0.5
    with torch.no_grad():
        out = masked_conv2d(x, mask, weight, bias, 1, post, impl=impl)
    check(out, reference(x, mask, weight, bias, post), mask, 1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_without_bias_or_affine(impl):
    x, weight, _, _, gen = make_case(2, 7, 14, 3, 0, seed=5, dtype=torch.float64)
    post = MaskedEpilogue(num_groups=7, eps=1e-3, relu=False)
    mask = torch.rand(2, 9, 13, generator=gen, dtype=torch.float64) - 0.5
    with torch.no_grad():
        out = masked_conv2d(x, mask, weight, None, 1, post, impl=impl)
    assert out.dtype == torch.float64
    check(out, reference(x, mask, weight, None, post), mask, 1e-10)


@needs_ext
def test_compiled_and_fallback_agree_on_larger_map():
    x, weight, bias, post, gen = make_case(2, 32, 64, 3, 32, seed=11)
    x = torch.randn(2, 32, 40, 50, generator=gen)
    mask = torch.rand(2, 40, 50, generator=gen) > 0.7
    with torch.no_grad():
        outs = {impl: masked_conv2d(x, mask, weight, bias, 1, post, impl=impl) for impl in
                ("sparse", "torch", "dense")}  # fmt: skip
    torch.testing.assert_close(outs["sparse"], outs["torch"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["dense"], outs["torch"], rtol=1e-4, atol=1e-4)


@needs_ext
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("density", [0.02, 0.3, 0.9])
def test_sparse_kernel_on_one_and_two_threads(threads, density):
    """On several threads the CPU kernel takes whole blocks per thread when there are enough
    active rows (2 threads: 1024 or more) and otherwise one GEMM threaded by the BLAS: both,
    with GroupNorm and the gated residual, equal the float64 reference (an 80x80 map: about
    130, 1900 and 5800 active positions)."""
    x, weight, _, post, gen = make_case(1, 16, 24, 3, 4, seed=23)
    x = torch.randn(1, 16, 80, 80, generator=gen)
    mask = torch.rand(1, 80, 80, generator=gen) < density
    residual = torch.randn(1, 24, 80, 80, generator=gen)
    gate = torch.rand(1, 2, 80, 80, generator=gen)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            out = masked_conv2d(x, mask, weight, None, 1, post, impl="sparse")
            cell = masked_conv2d(
                x, mask, weight, None, 1, post, residual=residual, gate=gate, impl="sparse"
            )
    finally:
        torch.set_num_threads(previous)
    ref = reference(x, mask, weight, None, post)
    check(out, ref, mask, 1e-4)
    scaled = ref.view(1, 2, 12, 80, 80) * gate.double().unsqueeze(2)
    expected = F.relu(residual.double() + scaled.view(1, 24, 80, 80))
    torch.testing.assert_close(cell.double(), expected, rtol=1e-4, atol=1e-4)


@needs_ext
def test_gather_scatter_primitives():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 5, 6, generator=gen)
    mask = torch.rand(2, 5, 6, generator=gen) > 0.5
    cols, active = EXT.gather_active_columns(x, mask, 3, 1)
    unfold = F.unfold(x, 3, padding=1)  # [N, C*9, H*W], channel-major
    expected = unfold.view(2, 4, 9, 30).permute(0, 3, 2, 1).reshape(60, 36)[active]
    torch.testing.assert_close(cols, expected)
    rows = torch.randn(active.numel(), 3, generator=gen)
    out = EXT.scatter_active_rows(rows, active, 2, 5, 6)
    assert (out.permute(0, 2, 3, 1).reshape(60, 3)[active] == rows).all()
    assert (out[~mask[:, None].expand(2, 3, 5, 6)] == 0).all()


def test_requires_grad_raises():
    x, weight, bias, post, _ = make_case(1, 4, 4, 3, 0, seed=1)
    mask = torch.ones(1, 9, 13, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="inference-only.*dense path"):
        masked_conv2d(x.requires_grad_(), mask, weight, bias, 1, post)
    with pytest.raises(RuntimeError, match="`weight` requires grad"):
        masked_conv2d(x.detach(), mask, weight.requires_grad_(), bias, 1, post)
    with torch.no_grad():
        masked_conv2d(x, mask, weight, bias, 1, post)


def test_bad_arguments_raise():
    x, weight, bias, _, _ = make_case(1, 4, 6, 3, 0, seed=1)
    with torch.no_grad():
        with pytest.raises(ValueError, match="mask must be"):
            masked_conv2d(x, torch.ones(1, 9, 12), weight, bias)
        with pytest.raises(ValueError, match="padding"):
            masked_conv2d(x, torch.ones(1, 9, 13), weight, bias, padding=0)
        with pytest.raises(ValueError, match="num_groups"):
            masked_conv2d(x, torch.ones(1, 9, 13), weight, bias, 1, MaskedEpilogue(num_groups=4))


def test_module_dense_and_masked_forward():
    torch.manual_seed(0)
    conv = MaskedConv2d(6, 8, 3, padding=1, bias=False, norm=nn.GroupNorm(4, 8), relu=True).eval()
    x = torch.randn(2, 6, 9, 13)
    mask = torch.rand(2, 9, 13) > 0.5
    dense = conv(x)
    torch.testing.assert_close(dense, F.relu(conv.norm(F.conv2d(x, conv.weight, padding=1))))
    assert dense.requires_grad  # the dense path stays differentiable for training
    with torch.no_grad():
        out = conv(x, mask)
    post = MaskedEpilogue.from_group_norm(conv.norm, relu=True)
    check(out, reference(x, mask, conv.weight.detach(), None, post), mask, 1e-4)
    with pytest.raises(ValueError, match="stride 1"):
        MaskedConv2d(6, 8, 3, stride=2, padding=1)


@needs_cuda
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-3), (torch.float16, 3e-2), (torch.bfloat16, 1e-1)]
)
@pytest.mark.parametrize("impl", ["auto", "sparse", "dense", "torch"])
def test_cuda_matches_reference(dtype, tol, impl):
    if impl == "sparse" and (EXT is None or not EXT.with_cuda()):
        pytest.skip("cvpods._C built without CUDA")
    x, weight, bias, post, gen = make_case(3, 8, 16, 3, 4, seed=9)
    mask = object_mask(3, 9, 13, gen)
    mask[0] = False
    ref = reference(x, mask, weight, bias, post)
    cuda = lambda t: None if t is None else t.cuda().to(dtype)  # noqa: E731
    post_cuda = MaskedEpilogue(
        post.num_groups, cuda(post.weight), cuda(post.bias), post.eps, post.relu
    )
    with torch.no_grad():
        out = masked_conv2d(cuda(x), mask.cuda(), cuda(weight), cuda(bias), 1, post_cuda, impl=impl)
    check(out.cpu(), ref, mask, tol)
