"""Access to the compiled extension ``cvpods._C``, with one clear warning when it is missing.

Importing ``cvpods._C`` registers the operators ``torch.ops.cvpods.masked_conv2d``,
``torch.ops.cvpods.gate_conv2d`` and ``torch.ops.cvpods.gated_depthwise`` (CPU, and CUDA when
built with it); their fake kernels, which give ``torch.compile`` and ``torch.fx`` the output shapes
and layouts without running them, are registered here.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import torch  # noqa: F401  (loads libc10/libtorch, which the extension links against)

_C: ModuleType | None
try:
    _C = importlib.import_module("cvpods._C")
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - depends on the build
    _C = None
    _IMPORT_ERROR = exc
    warnings.warn(
        f"cvpods._C could not be imported ({exc}); the masked convolution falls back to its "
        "pure-PyTorch path. Build the extension with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def _register_fake_kernels() -> None:
    @torch.library.register_fake("cvpods::masked_conv2d")
    def _masked_conv2d_fake(
        x, mask, weight, bias, padding, num_groups, gn_weight, gn_bias, eps, relu,
        residual=None, gate=None, impl="auto", dense_from=0.85, zero_inactive=True,
    ):  # fmt: skip
        n, _, h, w = x.shape
        return torch.empty(
            (n, weight.shape[0], h, w),
            dtype=x.dtype,
            device=x.device,
            memory_format=torch.channels_last,
        )

    @torch.library.register_fake("cvpods::gated_depthwise")
    def _gated_depthwise_fake(
        x, weight, bias, num_groups, gn_weight, gn_bias, eps, gate, zero_closed=True
    ):
        return torch.empty_like(x, memory_format=torch.channels_last)

    @torch.library.register_fake("cvpods::fuse_neighbours")
    def _fuse_neighbours_fake(
        x, finer, coarser, scale_weight, output_weight, finer_gate=None, coarser_gate=None
    ):
        return torch.empty_like(x, memory_format=torch.channels_last)

    @torch.library.register_fake("cvpods::gate_conv2d")
    def _gate_conv2d_fake(x, weight, bias, simd=True):
        n, _, h, w = x.shape
        return x.new_empty((n, weight.shape[0], h, w))


if _C is not None:
    _register_fake_kernels()


def extension_available() -> bool:
    """True when the compiled extension ``cvpods._C`` is importable."""
    return _C is not None


def get_extension() -> ModuleType | None:
    """The compiled extension module, or None when it could not be imported."""
    return _C
