"""Masked convolution: a stride-1 "same" convolution evaluated only at the active positions of a
per-image spatial mask, with an optional fused epilogue (GroupNorm over the active positions, ReLU).

Inference only. With the compiled extension ``cvpods._C``, :func:`masked_conv2d` is the registered
PyTorch operator ``torch.ops.cvpods.masked_conv2d`` (CPU and CUDA kernels, a fake kernel for
``torch.compile`` / ``torch.fx``), which itself chooses between

* the sparse kernel: blocks of gathered columns of the active positions multiplied by the packed
  weight (packed once per weight tensor and version), fused epilogue; and
* the dense ``F.conv2d`` (channels-last) followed by the masked epilogue, whenever the active
  fraction is at or above the measured break-even (:func:`dense_break_even`).

Without the extension a pure-PyTorch path (``index_select`` gather + ``mm`` in chunks) is used.
An optional gated residual fuses a dynamic depth cell's output into the epilogue:
``relu(residual + gate * y)``.

Outputs are ``[N, Cout, H, W]`` tensors in channels-last memory: at inactive positions exact zeros,
or ``relu(residual)`` with a residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cvpods._extension import get_extension

__all__ = [
    "DENSE_BREAK_EVEN_CPU",
    "DENSE_BREAK_EVEN_CPU_BF16",
    "DENSE_BREAK_EVEN_CPU_BF16_EMULATED",
    "DENSE_BREAK_EVEN_CPU_FALLBACK",
    "DENSE_BREAK_EVEN_CUDA",
    "MaskedConv2d",
    "MaskedEpilogue",
    "dense_break_even",
    "masked_conv2d",
]

# Active fraction at and above which the dense channels-last convolution + masked epilogue is used.
# Measured on the 2-core AMD EPYC (Zen 4, AVX-512) CPU of the development machine, 256 -> 256
# channels, 3x3, GN(32) + ReLU, P3/P4/P5 map sizes of an 800x1333 image, object-like and uniform
# masks, with the CPU time of one thread (robust to the other processes sharing the cores):
#   python tools/benchmark_masked_conv.py --threads 1 --clock cpu --densities 0.75 0.8 0.85 0.9 0.95 1
# The compiled sparse kernel costs ~1.08x the dense path per active position (its GEMM on gathered
# columns is a little slower than oneDNN's direct 3x3 convolution): sparse/dense = 0.55 at density
# 0.5, 0.84 at 0.75, 0.91 at 0.85, 1.08 at 1.0 on P3; the curves cross at 0.85-0.88 on P3/P4/P5.
# The pure-PyTorch fallback costs ~1.7x per active position (0.86 at 0.5, 1.30 at 0.75): ~0.55.
DENSE_BREAK_EVEN_CPU = 0.85
DENSE_BREAK_EVEN_CPU_FALLBACK = 0.55
# bfloat16 inputs (torch.autocast, MODEL.INFERENCE_DTYPE bfloat16), the same measurement with
# `--dtype bfloat16 --sizes P4 --kinds object`. On a CPU without native bfloat16 (the development
# VM: AVX2 only) both oneDNN's bf16 convolution and the bf16 GEMM are emulated, the convolution far
# more slowly: masked/dense = 0.16 at density 0.25 and below 1 at every density (README), so the
# dense path is never taken there. On CPUs with AVX512-BF16 / AMX the break-even is not measured
# (no such CPU here): both paths then run on the same bf16 units, as float32's do on FMA units,
# so float32's break-even is assumed.
DENSE_BREAK_EVEN_CPU_BF16 = DENSE_BREAK_EVEN_CPU
DENSE_BREAK_EVEN_CPU_BF16_EMULATED = 1.01
# Not measured (no GPU on the development machine): the gather + cuBLAS GEMM path is assumed to
# break even with cuDNN at about half density, as sparse-position kernels typically do on GPUs.
DENSE_BREAK_EVEN_CUDA = 0.5

# Rows of gathered columns per chunk in the pure-PyTorch fallback (bounds its temporary memory).
_FALLBACK_CHUNK_ROWS = 2048


@dataclass
class MaskedEpilogue:
    """Fused epilogue on computed positions only: optional GroupNorm whose statistics are taken
    per image over the computed positions only (the official semantics: GN applied to a [1, C, P]
    tensor of the P active columns), then optional ReLU."""

    num_groups: int = 0  # 0 = no GroupNorm
    weight: torch.Tensor | None = None  # [Cout] GN affine weight
    bias: torch.Tensor | None = None  # [Cout] GN affine bias
    eps: float = 1e-5
    relu: bool = False

    @classmethod
    def from_group_norm(cls, gn: nn.GroupNorm, relu: bool = False) -> MaskedEpilogue:
        """The epilogue equivalent to ``gn`` (then ReLU if ``relu``) applied to the active positions."""
        if not isinstance(gn, nn.GroupNorm):
            raise TypeError(f"MaskedEpilogue.from_group_norm expects nn.GroupNorm, got {type(gn)}")
        return cls(
            num_groups=gn.num_groups,
            weight=gn.weight if gn.affine else None,
            bias=gn.bias if gn.affine else None,
            eps=gn.eps,
            relu=relu,
        )


def _check_inference_only(tensors: dict[str, torch.Tensor | None]) -> None:
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"masked_conv2d is inference-only but `{name}` requires grad; training must use the "
                "dense path (F.conv2d / MaskedConv2d with mask=None), or wrap inference in "
                "torch.no_grad()."
            )


def _check_args(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    post: MaskedEpilogue,
    residual: torch.Tensor | None,
    gate: torch.Tensor | None,
) -> None:
    if x.dim() != 4:
        raise ValueError(f"masked_conv2d: x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != x.shape[1] or weight.shape[2] != weight.shape[3]:
        raise ValueError(
            f"masked_conv2d: weight must be [Cout, {x.shape[1]}, k, k], got {tuple(weight.shape)}"
        )
    k = weight.shape[2]
    if k % 2 != 1 or padding != k // 2:
        raise ValueError(
            f"masked_conv2d: need an odd kernel with padding = k // 2 (same-size output), "
            f"got k={k}, padding={padding}"
        )
    n, _, h, w = x.shape
    if tuple(mask.shape) != (n, h, w):
        raise ValueError(
            f"masked_conv2d: mask must be [N, H, W] = {(n, h, w)}, got {tuple(mask.shape)}"
        )
    if not x.is_floating_point() or weight.dtype != x.dtype:
        raise TypeError(
            f"masked_conv2d: x and weight must share a floating dtype, got {x.dtype} and {weight.dtype}"
        )
    cout = weight.shape[0]
    if bias is not None and (tuple(bias.shape) != (cout,) or bias.dtype != x.dtype):
        raise ValueError(
            f"masked_conv2d: bias must be [{cout}] of dtype {x.dtype}, "
            f"got {tuple(bias.shape)} {bias.dtype}"
        )
    if post.num_groups < 0 or (post.num_groups > 0 and cout % post.num_groups != 0):
        raise ValueError(
            f"masked_conv2d: post.num_groups={post.num_groups} must be 0 or divide Cout={cout}"
        )
    if residual is not None and tuple(residual.shape) != (n, cout, h, w):
        raise ValueError(
            f"masked_conv2d: residual must be [N, Cout, H, W] = {(n, cout, h, w)}, "
            f"got {tuple(residual.shape)}"
        )
    if gate is not None:
        if residual is None:
            raise ValueError("masked_conv2d: gate is given without residual")
        if gate.dim() != 4 or (gate.shape[0], *gate.shape[2:]) != (n, h, w) or cout % gate.shape[1]:
            raise ValueError(
                f"masked_conv2d: gate must be [N, G, H, W] with N, H, W = {(n, h, w)} and G "
                f"dividing Cout={cout}, got {tuple(gate.shape)}"
            )


def _active_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask > 0


def _zeros_like_output(x: torch.Tensor, cout: int) -> torch.Tensor:
    n, _, h, w = x.shape
    return torch.zeros((n, cout, h, w), dtype=x.dtype, device=x.device).contiguous(
        memory_format=torch.channels_last
    )


def _epilogue_rows(
    rows: torch.Tensor, image: torch.Tensor, num_images: int, post: MaskedEpilogue
) -> torch.Tensor:
    """Apply ``post`` to ``rows`` [P, Cout] whose image indices are ``image`` [P] (pure PyTorch)."""
    if post.num_groups > 0:
        p, cout = rows.shape
        groups = post.num_groups
        acc = torch.float64 if rows.dtype == torch.float64 else torch.float32
        v = rows.to(acc).view(p, groups, cout // groups)
        count = torch.bincount(image, minlength=num_images).to(acc) * (cout // groups)
        count = count.clamp(min=1)[:, None]
        mean = torch.zeros(num_images, groups, dtype=acc, device=rows.device)
        mean.index_add_(0, image, v.sum(2)).div_(count)
        centered = v - mean[image][:, :, None]
        var = torch.zeros_like(mean).index_add_(0, image, centered.square().sum(2)).div_(count)
        out = (centered * torch.rsqrt(var + post.eps)[image][:, :, None]).view(p, cout)
        if post.weight is not None:
            out = out * post.weight.to(acc)
        if post.bias is not None:
            out = out + post.bias.to(acc)
        rows = out.to(rows.dtype)
    if post.relu:
        rows = torch.relu(rows)
    return rows


def _scatter_rows(rows: torch.Tensor, active: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Rows [P, Cout] at flat positions ``active`` of a zero channels-last [N, Cout, H, W] map."""
    n, _, h, w = like.shape
    out = torch.zeros(n * h * w, rows.shape[1], dtype=rows.dtype, device=rows.device)
    out.index_copy_(0, active, rows)
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


def _masked_conv2d_torch(
    x: torch.Tensor,
    active_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    post: MaskedEpilogue,
) -> torch.Tensor:
    """Pure-PyTorch sparse path: gather k*k shifted rows per active position, chunked mm, scatter."""
    n, c, h, w = x.shape
    cout, k = weight.shape[0], weight.shape[2]
    pad = k // 2
    hp, wp = h + 2 * pad, w + 2 * pad
    active = active_mask.reshape(-1).nonzero().squeeze(1)
    image = active // (h * w)
    ys = (active % (h * w)) // w
    xs = active % w
    # Row index (in the padded NHWC input) of each position's top-left tap, and the tap offsets.
    base = (image * hp + ys) * wp + xs
    offs = torch.arange(k, device=x.device)
    taps = (offs[:, None] * wp + offs).view(-1)
    x_rows = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1).reshape(-1, c)
    w_packed = weight.permute(0, 2, 3, 1).reshape(cout, -1).t()
    rows = torch.empty(active.numel(), cout, dtype=x.dtype, device=x.device)
    for start in range(0, active.numel(), _FALLBACK_CHUNK_ROWS):
        idx = (base[start : start + _FALLBACK_CHUNK_ROWS, None] + taps).view(-1)
        cols = x_rows.index_select(0, idx).view(-1, k * k * c)
        chunk = rows[start : start + _FALLBACK_CHUNK_ROWS]
        if bias is not None:
            torch.addmm(bias, cols, w_packed, out=chunk)
        else:
            torch.mm(cols, w_packed, out=chunk)
    rows = _epilogue_rows(rows, image, n, post)
    return _scatter_rows(rows, active, x.new_empty(n, cout, h, w))


def _dense_then_epilogue(
    x: torch.Tensor,
    active_mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    post: MaskedEpilogue,
) -> torch.Tensor:
    """Pure PyTorch: dense channels-last convolution, then the epilogue on the active positions."""
    y = F.conv2d(
        x.contiguous(memory_format=torch.channels_last), weight, bias, padding=weight.shape[2] // 2
    )
    y = y.contiguous(memory_format=torch.channels_last)
    n, cout, h, w = y.shape
    active = active_mask.reshape(-1).nonzero().squeeze(1)
    rows = y.permute(0, 2, 3, 1).reshape(-1, cout).index_select(0, active)
    rows = _epilogue_rows(rows, active // (h * w), n, post)
    return _scatter_rows(rows, active, y)


def _gated_residual(
    out: torch.Tensor, residual: torch.Tensor, gate: torch.Tensor | None
) -> torch.Tensor:
    """Pure PyTorch: ``relu(residual + gate * out)`` (``out`` is zero at inactive positions)."""
    if gate is not None:
        n, c, h, w = out.shape
        g = gate.shape[1]
        out = (out.reshape(n, g, c // g, h, w) * gate.unsqueeze(2)).view(n, c, h, w)
    return torch.relu(out + residual).contiguous(memory_format=torch.channels_last)


def dense_break_even(
    device: torch.device, compiled: bool = True, dtype: torch.dtype | None = None
) -> float:
    """Active fraction from which :func:`masked_conv2d` runs the dense convolution instead.

    ``compiled``: whether the sparse path is the compiled kernel (else the PyTorch fallback);
    ``dtype``: the input's dtype (bfloat16 has its own measured break-even).
    """
    if device.type == "cuda":
        return DENSE_BREAK_EVEN_CUDA
    if not compiled:
        return DENSE_BREAK_EVEN_CPU_FALLBACK
    if dtype == torch.bfloat16:
        from cvpods.engine import precision  # the native-bfloat16 check (tests replace it)

        if precision.cpu_has_native_bf16():
            return DENSE_BREAK_EVEN_CPU_BF16
        return DENSE_BREAK_EVEN_CPU_BF16_EMULATED
    return DENSE_BREAK_EVEN_CPU


def _autocast_inputs(x, weight, bias, residual, gate):
    """Under ``torch.autocast`` on ``x``'s device: x, weight, bias, residual and gate in the
    autocast dtype (as the operator's Autocast kernel casts them; float64 is left alone)."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type) or torch.float64 in (x.dtype, weight.dtype):
        return x, weight, bias, residual, gate
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        return t.to(dtype) if t is not None and t.is_floating_point() else t

    return cast(x), cast(weight), cast(bias), cast(residual), cast(gate)


def _uses_extension(x: torch.Tensor) -> bool:
    ext = get_extension()
    return ext is not None and (x.device.type == "cpu" or ext.with_cuda())


def masked_conv2d(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: int = 1,
    post: MaskedEpilogue | None = None,
    *,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    impl: str = "auto",
    zero_inactive: bool = True,
) -> torch.Tensor:
    """Stride-1 convolution at the active positions of ``mask`` only, then the fused epilogue.

    Args:
        x: ``[N, C, H, W]`` input, any strides (channels-last is read directly; other layouts only
            at the positions the convolution reads), float32/float64/bfloat16 (and float16 on
            CUDA). Under ``torch.autocast`` x, weight, bias, residual and gate are cast to the
            autocast dtype (bfloat16 on CPU) first; GroupNorm statistics are accumulated in
            float32 / float64 whatever the dtype.
        mask: ``[N, H, W]`` bool or float; a position is computed where ``mask > 0``.
        weight: ``[Cout, C, k, k]`` with odd ``k`` (1 or 3 in practice).
        bias: optional ``[Cout]``, added before the epilogue.
        padding: must be ``k // 2`` (the output has the input's spatial size).
        post: optional :class:`MaskedEpilogue` (GroupNorm over each image's active positions, ReLU).
        residual: optional ``[N, Cout, H, W]``; the output becomes ``relu(residual + gate * y)``
            where ``y`` is the epilogue's output (zero at inactive positions), i.e.
            ``relu(residual)`` at inactive positions: a gated residual cell in one pass.
        gate: optional ``[N, G, H, W]`` (needs ``residual``), gate map ``g`` scaling channel
            group ``g`` of ``y``; default 1.
        impl: ``"auto"`` (dense above the break-even density, sparse below), or force
            ``"sparse"`` (compiled sparse kernel), ``"dense"`` (dense convolution + masked
            epilogue) or ``"torch"`` (the pure-PyTorch sparse path). A test and benchmark hook.
        zero_inactive: False leaves the output at inactive positions unwritten (undefined
            values) on the compiled CPU sparse path, for a consumer that reads only positions
            ``mask`` covers, e.g. a following 3x3 masked convolution whose mask, dilated by one
            pixel, lies inside this one (a depth cell's conv1 and conv2); the skipped memory is
            then never written, not even its pages touched. Without a residual only; the other
            paths always write zeros.

    Returns:
        ``[N, Cout, H, W]`` in channels-last memory: the epilogue's output at active positions,
        exact zeros (or ``relu(residual)``) elsewhere.

    Raises:
        RuntimeError: when grad mode is on and an input requires grad (training must use the dense
            convolution).
    """
    post = post if post is not None else MaskedEpilogue()
    if isinstance(x, torch.fx.Proxy):  # torch.fx symbolic tracing: record the operator itself
        return torch.ops.cvpods.masked_conv2d(
            x, mask, weight, bias, padding, post.num_groups, post.weight, post.bias, post.eps,
            post.relu, residual, gate, impl, dense_break_even(torch.device("cpu")), zero_inactive,
        )  # fmt: skip
    x, weight, bias, residual, gate = _autocast_inputs(x, weight, bias, residual, gate)
    _check_inference_only(
        {"x": x, "weight": weight, "bias": bias, "post.weight": post.weight, "post.bias": post.bias,
         "residual": residual, "gate": gate}
    )  # fmt: skip
    _check_args(x, mask, weight, bias, padding, post, residual, gate)
    if impl not in ("auto", "sparse", "dense", "torch"):
        raise ValueError(f"masked_conv2d: impl must be auto/sparse/torch/dense, got {impl!r}")
    if impl != "torch" and _uses_extension(x):
        return torch.ops.cvpods.masked_conv2d(
            x, mask, weight, bias, padding, post.num_groups, post.weight, post.bias, post.eps,
            post.relu, residual, gate, impl, dense_break_even(x.device, True, x.dtype),
            zero_inactive,
        )  # fmt: skip
    if impl == "sparse":
        raise RuntimeError("masked_conv2d(impl='sparse') needs the compiled extension cvpods._C")
    # The pure-PyTorch paths.
    active_mask = _active_mask(mask)
    cout = weight.shape[0]
    if impl == "auto":
        density = active_mask.float().mean().item() if active_mask.numel() else 0.0
        if density == 0.0:
            out = _zeros_like_output(x, cout)
        elif density >= dense_break_even(x.device, compiled=False):
            out = _dense_then_epilogue(x, active_mask, weight, bias, post)
        else:
            out = _masked_conv2d_torch(x, active_mask, weight, bias, post)
    elif impl == "dense":
        out = _dense_then_epilogue(x, active_mask, weight, bias, post)
    else:
        out = _masked_conv2d_torch(x, active_mask, weight, bias, post)
    return out if residual is None else _gated_residual(out, residual, gate)


class MaskedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, "same" padding) that can be evaluated at masked positions only.

    ``forward(x)`` / ``forward(x, None)`` is the ordinary dense convolution followed by the
    optional ``norm`` (child module, state-dict names ``norm.*``) and ReLU; it is differentiable.
    ``forward(x, mask)`` is :func:`masked_conv2d` with the equivalent fused epilogue (GroupNorm
    statistics over each image's active positions); inference only.
    """

    def __init__(
        self,
        *args,
        norm: nn.GroupNorm | None = None,
        relu: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        k = self.kernel_size[0]
        if (
            self.kernel_size[0] != self.kernel_size[1]
            or k % 2 != 1
            or self.stride != (1, 1)
            or self.dilation != (1, 1)
            or self.groups != 1
            or self.padding != (k // 2, k // 2)
            or self.padding_mode != "zeros"
        ):
            raise ValueError(
                "MaskedConv2d supports square odd kernels with stride 1, dilation 1, groups 1 and "
                f"zero padding k // 2; got kernel_size={self.kernel_size}, stride={self.stride}, "
                f"dilation={self.dilation}, groups={self.groups}, padding={self.padding}"
            )
        if norm is not None and not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"MaskedConv2d: norm must be nn.GroupNorm or None, got {type(norm)}")
        self.norm = norm
        self.relu = relu

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [N, C, H, W], ``mask`` [N, H, W] or None -> [N, Cout, H, W]."""
        if mask is None:
            y = super().forward(x)
            if self.norm is not None:
                y = self.norm(y)
            return F.relu(y) if self.relu else y
        if self.norm is not None:
            post = MaskedEpilogue.from_group_norm(self.norm, relu=self.relu)
        else:
            post = MaskedEpilogue(relu=self.relu)
        return masked_conv2d(x, mask, self.weight, self.bias, self.padding[0], post)
