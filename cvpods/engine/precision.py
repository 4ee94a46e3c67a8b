"""Inference precision: ``MODEL.INFERENCE_DTYPE`` ("float32" or "bfloat16").

bfloat16 inference runs the *network* parts of a detector under
``torch.autocast(device, dtype=torch.bfloat16)`` and everything around them in float32:

* bfloat16 (autocast's lower-precision list): the convolutions and linear layers of the backbone,
  the FPN, the head towers and predictors (and the RPN head, ROI box head and box predictor of
  two-stage detectors), and the masked convolution of the dynamic head (its gathered columns and
  GEMM in bfloat16, its fused GroupNorm statistics accumulated in float32 / float64).
* float32: GroupNorm statistics (PyTorch's CPU GroupNorm accumulates in float32 even on bfloat16
  tensors), the spatial-gate convolutions and the gated depthwise units of the dynamic head (the
  gates' signs decide where the head computes; ``cvpods::gate_conv2d`` / ``gated_depthwise`` take
  float32 under autocast, and a gate convolution given a bfloat16 map runs in float32), and,
  outside the network parts, pixel normalisation, shift / anchor
  generation, box decoding, score thresholds, NMS, ROI pooling and resizing to the input size.
  Each network part's floating outputs are cast back to float32, so nothing after it sees
  bfloat16. The parts' 4-D inputs are made channels-last (oneDNN's bfloat16 convolutions are
  fast in that layout, and emulated ones are far slower in NCHW).

Training precision is not affected (this is inference only; training runs in float32).

Safety: on a CPU without native bfloat16 arithmetic (AVX512-BF16 or AMX) a bfloat16 request runs
float32 instead, with one warning, unless ``MODEL.INFERENCE_DTYPE_FORCE`` is True (``--bf16-force``
on the command line): there, bfloat16 is emulated and several times slower than float32.
:func:`cpu_has_native_bf16` is the check (tests replace it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "INFERENCE_DTYPES",
    "NETWORK_PARTS",
    "InferencePrecision",
    "add_precision_arguments",
    "apply_inference_dtype",
    "cpu_has_native_bf16",
    "inference_dtype",
    "inference_dtype_name",
    "inference_precision",
    "precision_overrides",
    "precision_record",
    "resolve_inference_dtype",
]

logger = logging.getLogger(__name__)

#: The values of ``MODEL.INFERENCE_DTYPE``.
INFERENCE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

#: Attribute paths of the sub-modules that run under autocast (those a model has).
NETWORK_PARTS = (
    "backbone",
    "head",
    "proposal_generator.rpn_head",
    "roi_heads.box_head",
    "roi_heads.box_predictor",
)

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_warned: set[str] = set()


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def _native_bf16_detected() -> bool:
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported",)]
    checks.append(getattr(torch.cpu, "_is_amx_tile_supported", None))
    for check in checks:
        try:
            if check is not None and check():
                return True
        except Exception:  # pragma: no cover - private torch API
            pass
    return bool(_cpuinfo_flags() & set(_CPU_BF16_FLAGS))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16).

    Asks torch (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``), then the
    ``flags`` of ``/proc/cpuinfo``. Without it, oneDNN and PyTorch emulate bfloat16 with float32
    arithmetic plus conversions, which is slower than float32.
    """
    return _native_bf16_detected()


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    logger.warning("%s", message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def inference_dtype_name(value: Any) -> str:
    """``value`` ("float32", "bfloat16", "bf16", "fp32" or a torch dtype) as its canonical name."""
    aliases = {"fp32": "float32", "float": "float32", "bf16": "bfloat16"}
    if isinstance(value, torch.dtype):
        name = str(value).replace("torch.", "")
    else:
        name = aliases.get(str(value).lower(), str(value).lower())
    if name not in INFERENCE_DTYPES:
        raise ValueError(
            f"MODEL.INFERENCE_DTYPE must be one of {sorted(INFERENCE_DTYPES)}, got {value!r}"
        )
    return name


def resolve_inference_dtype(
    requested: Any, device: Any = "cpu", force: bool = False
) -> torch.dtype:
    """The dtype inference will actually run in.

    ``bfloat16`` on a CPU without native bfloat16 becomes float32 with one warning, unless
    ``force``. On CUDA bfloat16 is passed to autocast as is (untested: no GPU here).
    """
    name = inference_dtype_name(requested)
    dtype = INFERENCE_DTYPES[name]
    device_type = torch.device(device).type
    if dtype == torch.bfloat16 and device_type == "cpu" and not cpu_has_native_bf16():
        if force:
            _warn_once(
                "forced",
                "MODEL.INFERENCE_DTYPE=bfloat16 is forced on a CPU without native bfloat16 "
                "(no AVX512-BF16 / AMX): it is emulated and slower than float32.",
            )
        else:
            _warn_once(
                "fallback",
                "MODEL.INFERENCE_DTYPE=bfloat16 asked for, but this CPU has no native bfloat16 "
                "(AVX512-BF16 / AMX), where bfloat16 is slower than float32: running float32. "
                "Set MODEL.INFERENCE_DTYPE_FORCE True (or pass --bf16-force) to run bfloat16 "
                "anyway.",
            )
            return torch.float32
    return dtype


def inference_dtype(cfg: Any) -> torch.dtype:
    """The dtype inference runs in for ``cfg`` (``MODEL.INFERENCE_DTYPE``, ``..._FORCE``,
    ``MODEL.DEVICE``); configs without the keys run float32."""
    model_cfg = cfg.MODEL
    return resolve_inference_dtype(
        model_cfg.get("INFERENCE_DTYPE", "float32"),
        model_cfg.get("DEVICE", "cpu"),
        bool(model_cfg.get("INFERENCE_DTYPE_FORCE", False)),
    )


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bf16`` and ``--bf16-force`` (cvpods_train / cvpods_test / demo.py)."""
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="infer in bfloat16 (MODEL.INFERENCE_DTYPE bfloat16); runs float32 with a warning on "
        "a CPU without native bfloat16 (AVX512-BF16 / AMX)",
    )
    parser.add_argument(
        "--bf16-force",
        action="store_true",
        help="--bf16 even on a CPU without native bfloat16 (MODEL.INFERENCE_DTYPE_FORCE True; "
        "emulated, slower than float32)",
    )


def precision_overrides(args: argparse.Namespace) -> list[str]:
    """The ``KEY VALUE`` overrides that ``--bf16`` / ``--bf16-force`` stand for."""
    opts: list[str] = []
    if getattr(args, "bf16", False) or getattr(args, "bf16_force", False):
        opts += ["MODEL.INFERENCE_DTYPE", "bfloat16"]
    if getattr(args, "bf16_force", False):
        opts += ["MODEL.INFERENCE_DTYPE_FORCE", "True"]
    return opts


def _to_float32(value: Any) -> Any:
    """``value`` with every floating tensor of a lower precision cast to float32 (recursively
    through lists, tuples, dicts and dataclasses)."""
    if isinstance(value, torch.Tensor):
        low = value.is_floating_point() and value.dtype in (torch.bfloat16, torch.float16)
        return value.float() if low else value
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    if isinstance(value, tuple):
        items = [_to_float32(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, dict):
        return type(value)((k, _to_float32(v)) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: _to_float32(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init
        }
        return dataclasses.replace(value, **changes)
    return value


def _channels_last(value: Any) -> Any:
    """A 4-D floating tensor (or a list of them) in channels-last memory: oneDNN's bfloat16
    convolutions are fast in that layout and, emulated (no native bfloat16), pathologically slow in
    NCHW; the dynamic head's operators read channels-last directly."""
    if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point():
        return value.contiguous(memory_format=torch.channels_last)
    if isinstance(value, list):
        return [_channels_last(v) for v in value]
    return value


def _network_parts(model: nn.Module) -> list[nn.Module]:
    parts: list[nn.Module] = []
    for path in NETWORK_PARTS:
        module: Any = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, nn.Module) and all(module is not p for p in parts):
            parts.append(module)
    return parts


class InferencePrecision:
    """Runs the network parts of a model under autocast; :meth:`remove` undoes it."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        self.dtype = dtype
        self.device_type = device_type
        self._wrapped: list[nn.Module] = []
        if dtype == torch.float32:
            return
        from cvpods.layers import SpatialGate

        for part in _network_parts(model):
            self._wrap(part)
            for module in part.modules():
                if isinstance(module, SpatialGate):
                    self._wrap_float32(module.gate_conv)

    def _wrap(self, module: nn.Module) -> None:
        original = module.forward
        dtype, device_type = self.dtype, self.device_type

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            if module.training:  # training precision is not changed
                return original(*args, **kwargs)
            args = tuple(_channels_last(a) for a in args)
            with torch.autocast(device_type, dtype=dtype):
                out = original(*args, **kwargs)
            return _to_float32(out)

        module.forward = forward  # an instance attribute: state dicts are unchanged
        self._wrapped.append(module)

    def _wrap_float32(self, module: nn.Module) -> None:
        """``module`` in float32 inside the autocast region (a spatial gate's convolution on a
        bfloat16 input: the sign of its output opens the gate). On float32 inputs the gates use
        the compiled ``cvpods::gate_conv2d``, float32 under autocast, without this forward."""
        original = module.forward
        device_type = self.device_type

        @functools.wraps(original)
        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, enabled=False):
                return original(x.float())

        module.forward = forward
        self._wrapped.append(module)

    @property
    def parts(self) -> list[nn.Module]:
        """The wrapped modules: the network parts, and the gate convs kept in float32."""
        return list(self._wrapped)

    def remove(self) -> None:
        """Restore every wrapped module's own ``forward`` (the model infers in float32 again)."""
        for module in self._wrapped:
            module.__dict__.pop("forward", None)
        self._wrapped = []


def apply_inference_dtype(
    model: nn.Module, dtype: torch.dtype, device: Any = None
) -> InferencePrecision:
    """Make ``model``'s eval-mode forward run its network parts (:data:`NETWORK_PARTS`) in
    ``dtype`` (float32: nothing changes). Returns a handle whose ``remove()`` restores it."""
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
    return InferencePrecision(model, dtype, torch.device(device).type)


def precision_record(cfg: Any, dtype: torch.dtype) -> dict[str, str]:
    """What results.json records: ``{"inference_dtype": <used>}``, plus
    ``"inference_dtype_requested"`` when the config asked for another one (the fallback)."""
    record = {"inference_dtype": inference_dtype_name(dtype)}
    requested = inference_dtype_name(cfg.MODEL.get("INFERENCE_DTYPE", "float32"))
    if requested != record["inference_dtype"]:
        record["inference_dtype_requested"] = requested
    return record


@contextlib.contextmanager
def inference_precision(model: nn.Module, cfg: Any) -> Iterator[torch.dtype]:
    """``with inference_precision(model, cfg) as dtype:`` the model infers in ``cfg``'s dtype."""
    dtype = inference_dtype(cfg)
    handle = apply_inference_dtype(model, dtype, cfg.MODEL.get("DEVICE", None))
    try:
        yield dtype
    finally:
        handle.remove()
