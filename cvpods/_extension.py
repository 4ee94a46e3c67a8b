"""Access to the compiled extension ``cvpods._C``, with one clear warning when it is missing."""

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


def extension_available() -> bool:
    """True when the compiled extension ``cvpods._C`` is importable."""
    return _C is not None


def get_extension() -> ModuleType | None:
    """The compiled extension module, or None when it could not be imported."""
    return _C
