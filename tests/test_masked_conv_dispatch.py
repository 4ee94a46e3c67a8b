"""The sparse / dense switch of ``masked_conv2d(impl="auto")`` at the break-even density.

Written against the public API only (``masked_conv2d`` and ``dense_break_even``), whichever layer
makes the choice (the Python wrapper or the registered operator, which receives the break-even
as an argument). Which path ran is read from the profiler: the dense path runs a library
convolution (``aten::conv2d``), the sparse one never does. Every result is compared with a
float64 reference written here: convolution, then per image GroupNorm over the active positions
(mean and biased variance of each channel group), then ReLU, zeros at inactive positions.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import cvpods.layers.masked_conv as masked_conv_module
from cvpods._extension import get_extension
from cvpods.layers.masked_conv import MaskedEpilogue, dense_break_even, masked_conv2d

N, CIN, COUT, H, W, GROUPS = 2, 6, 8, 10, 10, 4
TOTAL = N * H * W  # the density is the active fraction of the whole [N, H, W] mask


def reference(x, mask, weight, bias, gn_weight, gn_bias, eps) -> torch.Tensor:
    y = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    out = torch.zeros_like(y)
    per_group = COUT // GROUPS
    for i in range(N):
        where = mask[i]
        for g in range(GROUPS):
            channels = slice(g * per_group, (g + 1) * per_group)
            values = y[i, channels][:, where]
            if values.numel() == 0:
                continue
            mean = values.mean()
            var = ((values - mean) ** 2).mean()
            normed = (values - mean) / math.sqrt(float(var) + eps)
            normed = normed * gn_weight.double()[channels, None] + gn_bias.double()[channels, None]
            block = out[i, channels]
            block[:, where] = torch.relu(normed)
    return out


def case(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, CIN, H, W, generator=gen).to(dtype)
    weight = (torch.randn(COUT, CIN, 3, 3, generator=gen) / 7).to(dtype)
    bias = torch.randn(COUT, generator=gen).to(dtype)
    gn_weight = (1 + 0.5 * torch.randn(COUT, generator=gen)).to(dtype)
    gn_bias = (0.5 * torch.randn(COUT, generator=gen)).to(dtype)
    return x, weight, bias, gn_weight, gn_bias


def mask_with(active: int, seed: int = 1) -> torch.Tensor:
    """``active`` positions of the [N, H, W] mask set, spread over both images at random."""
    order = torch.randperm(TOTAL, generator=torch.Generator().manual_seed(seed))
    flat = torch.zeros(TOTAL, dtype=torch.bool)
    flat[order[:active]] = True
    mask = flat.view(N, H, W)
    assert 0 < int(mask[0].sum()) < H * W and 0 < int(mask[1].sum()) < H * W
    return mask


def run(x, mask, weight, bias, gn_weight, gn_bias, impl="auto") -> tuple[torch.Tensor, bool]:
    """The output and whether a library (dense) convolution ran."""
    post = MaskedEpilogue(num_groups=GROUPS, weight=gn_weight, bias=gn_bias, eps=1e-5, relu=True)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = masked_conv2d(x, mask, weight, bias, 1, post, impl=impl)
    names = {event.name for event in prof.events()}
    return out, bool(names & {"aten::conv2d", "aten::convolution", "aten::_convolution"})


def break_even() -> float:
    """The break-even ``masked_conv2d`` uses on CPU for this build (compiled kernel or not)."""
    return dense_break_even(torch.device("cpu"), compiled=get_extension() is not None)


def check(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    assert (out.permute(1, 0, 2, 3)[:, ~mask] == 0).all()


TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


def test_the_profiler_tells_the_paths_apart():
    """The forced implementations, seen by the detector used below."""
    x, weight, bias, gn_w, gn_b = case(torch.float32)
    mask = mask_with(100)
    ref = reference(x, mask, weight, bias, gn_w, gn_b, 1e-5)
    forced = {"dense": True, "torch": False}
    if get_extension() is not None:
        forced["sparse"] = False
    for impl, dense in forced.items():
        out, ran_dense = run(x, mask, weight, bias, gn_w, gn_b, impl=impl)
        assert ran_dense is dense, impl
        check(out, ref, mask, TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_switches_at_the_break_even_with_the_same_result(dtype):
    threshold = break_even()
    assert 0.0 < threshold <= 1.0
    at = math.ceil(threshold * TOTAL - 1e-9)  # the fewest active positions at the break-even
    assert (at - 1) / TOTAL < threshold <= at / TOTAL
    x, weight, bias, gn_w, gn_b = case(dtype)
    for active, expect_dense in ((at - 1, False), (at, True), (min(at + 5, TOTAL - 2), True)):
        mask = mask_with(active)
        out, ran_dense = run(x, mask, weight, bias, gn_w, gn_b)
        assert ran_dense is expect_dense, f"density {active / TOTAL} (break-even {threshold})"
        check(out, reference(x, mask, weight, bias, gn_w, gn_b, 1e-5), mask, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_moved_break_even_changes_the_path_not_the_result(monkeypatch, dtype, density):
    """``dense_break_even`` patched to 0 (always dense) and to 1.01 (never dense)."""
    x, weight, bias, gn_w, gn_b = case(dtype)
    mask = mask_with(round(density * TOTAL))
    ref = reference(x, mask, weight, bias, gn_w, gn_b, 1e-5)
    results = {}
    for value, expect_dense in ((0.0, True), (1.01, False)):
        monkeypatch.setattr(masked_conv_module, "dense_break_even", lambda *a, _v=value, **k: _v)
        out, ran_dense = run(x, mask, weight, bias, gn_w, gn_b)
        assert ran_dense is expect_dense, f"break-even {value}"
        check(out, ref, mask, TOLERANCE[dtype])
        results[value] = out
    torch.testing.assert_close(
        results[0.0], results[1.01], rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype]
    )


def test_empty_mask_runs_no_convolution_at_any_break_even(monkeypatch):
    x, weight, bias, gn_w, gn_b = case(torch.float32)
    empty = torch.zeros(N, H, W, dtype=torch.bool)
    for value in (0.0, 1.01):
        monkeypatch.setattr(masked_conv_module, "dense_break_even", lambda *a, _v=value, **k: _v)
        out, ran_dense = run(x, empty, weight, bias, gn_w, gn_b)
        assert not ran_dense and out.shape == (N, COUT, H, W) and (out == 0).all()
