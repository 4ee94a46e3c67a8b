"""Recognising weight files and renaming their tensors to cvpods names.

Supported layouts of the object read from a file:

* a project checkpoint ``{"model": state_dict, "optimizer": ..., "iteration": ...}``, an official
  cvpods / DynamicHead model-zoo file (``{"model": ...}``, maybe with ``"__author__"`` and
  ``"matching_heuristics"``) or a detectron2 model-zoo ``.pkl`` (same, with numpy arrays);
* ``{"blobs": {...}}`` (Detectron / Caffe2 ``.pkl``) and ``{"state_dict": {...}}``;
* a bare state dict.

Supported tensor names:

* cvpods names (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ``backbone.bottom_up....``),
  used unchanged; detectron2-converted ``.pkl`` files use them too;
* torchvision ResNet names (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...);
* Caffe2 / Detectron (MSRA) names (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ...).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "CAFFE2",
    "CVPODS",
    "TORCHVISION",
    "WeightsContent",
    "caffe2_to_cvpods",
    "parse_weights",
    "torchvision_to_cvpods",
]

logger = logging.getLogger(__name__)

CVPODS = "cvpods"
TORCHVISION = "torchvision"
CAFFE2 = "caffe2"

# Top-level entries describing a model-zoo file rather than holding training state.
_METADATA_KEYS = ("__author__", "matching_heuristics")


@dataclass
class WeightsContent:
    """The model tensors of a weight file, renamed to cvpods names, plus everything else in it.

    Attributes:
        state_dict: name -> float tensor (numpy arrays converted), cvpods names.
        naming: the tensor naming the file used: ``"cvpods"``, ``"torchvision"`` or ``"caffe2"``.
        author: the file's ``"__author__"`` entry ("" if none).
        extra: the other top-level entries (``optimizer``, ``scheduler``, ``iteration``, ...).
        affine_norms: norm-layer prefixes (``res2.0.conv1.norm``) whose statistics were not in the
            file (Caffe2 affine channels) and were set to the identity.
        dropped: names that were removed on purpose (ImageNet classifier, optimizer momenta).
    """

    state_dict: dict[str, torch.Tensor]
    naming: str = CVPODS
    author: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    affine_norms: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _to_tensor(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    return value


def _split_container(obj: Any, source: str) -> tuple[Mapping[str, Any], dict[str, Any], bool]:
    """(model tensors, other entries, whether the tensors came from a Caffe2 "blobs" dict)."""
    if not isinstance(obj, Mapping):
        raise TypeError(
            f"{source}: expected a dict (a checkpoint or a state dict), got {type(obj).__name__}"
        )
    for key in ("model", "blobs", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            return obj[key], {k: v for k, v in obj.items() if k != key}, key == "blobs"
    tensors = {k: v for k, v in obj.items() if _is_array(v)}
    if not tensors and obj:
        raise ValueError(
            f"{source}: found no weights; expected a 'model', 'blobs' or 'state_dict' entry or a "
            f"dict of tensors, got the keys {sorted(map(str, obj))[:10]}"
        )
    return tensors, {k: v for k, v in obj.items() if k not in tensors}, False


def parse_weights(obj: Any, source: str) -> WeightsContent:
    """Split the object read from ``source`` into model tensors (cvpods names) and the rest."""
    tensors, extra, from_blobs = _split_container(obj, source)
    author = str(extra.pop("__author__", "") or "")
    for key in _METADATA_KEYS:
        extra.pop(key, None)
    state_dict: dict[str, Any] = {}
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"{source}: weight names must be strings, got {key!r}")
        if from_blobs and not _is_array(value):
            continue  # Detectron blobs files also hold scalars such as the learning rate.
        state_dict[key] = _to_tensor(value)
    state_dict = _strip_common_prefix(state_dict, "module.")

    content = WeightsContent(state_dict=state_dict, author=author, extra=extra)
    if from_blobs or _looks_like_caffe2(state_dict):
        content.naming = CAFFE2
        content.state_dict, content.affine_norms, content.dropped = caffe2_to_cvpods(state_dict)
    elif _looks_like_torchvision(state_dict):
        content.naming = TORCHVISION
        content.state_dict, content.dropped = torchvision_to_cvpods(state_dict)
    if content.dropped:
        logger.info(
            "%s: ignored %d entries that are not part of a detector (%s)",
            source,
            len(content.dropped),
            ", ".join(content.dropped[:6]) + (", ..." if len(content.dropped) > 6 else ""),
        )
    return content


def _strip_common_prefix(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Remove ``prefix`` (e.g. DDP's ``module.``) when every key has it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


# ------------------------------------------------------------------------------------ torchvision

_TV_MARKERS = ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight")

_TORCHVISION_RULES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"conv1\.weight"), lambda m: "stem.conv1.weight"),
    (re.compile(r"bn1\.(\w+)"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (
        re.compile(r"layer(\d+)\.(\d+)\.conv(\d+)\.weight"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        re.compile(r"layer(\d+)\.(\d+)\.bn(\d+)\.(\w+)"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        re.compile(r"layer(\d+)\.(\d+)\.downsample\.0\.weight"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
    ),
    (
        re.compile(r"layer(\d+)\.(\d+)\.downsample\.1\.(\w+)"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
]


def _looks_like_torchvision(state_dict: Mapping[str, Any]) -> bool:
    return all(marker in state_dict for marker in _TV_MARKERS)


def torchvision_to_cvpods(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """torchvision ResNet names -> cvpods ResNet names; returns (renamed, dropped ``fc.*`` keys).

    ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``; ``layerN.i`` -> ``res(N+1).i``;
    ``bnK`` -> ``convK.norm``; ``downsample.0``/``.1`` -> ``shortcut``/``shortcut.norm``.
    Names that match no rule are kept (and show up as unused when loading).
    """
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("fc."):
            dropped.append(key)
            continue
        renamed[_apply_rules(key, _TORCHVISION_RULES)] = value
    return renamed, dropped


def _apply_rules(key: str, rules: list[tuple[re.Pattern, Callable[[re.Match], str]]]) -> str:
    for pattern, rename in rules:
        match = pattern.fullmatch(key)
        if match:
            return rename(match)
    return key


# ------------------------------------------------------------------------------------ Caffe2

_C2_MARKER = re.compile(r"conv1_w|res_conv1_bn_[sb]|res\d+_\d+_branch(1|2[a-z])_\w+")
_C2_PARAM = {"w": "weight", "b": "bias"}
_C2_NORM_PARAM = {"s": "weight", "b": "bias"}


def _c2_module(name: str) -> str | None:
    """Caffe2 layer name -> cvpods module name (``res2_0_branch2a`` -> ``res2.0.conv1``)."""
    if name == "conv1":
        return "stem.conv1"
    if name == "res_conv1":
        return "stem.conv1"
    match = re.fullmatch(r"res(\d+)_(\d+)_branch(1|2([a-z]))", name)
    if match is None:
        return None
    stage, block, branch, letter = match.groups()
    if branch == "1":
        return f"res{stage}.{block}.shortcut"
    return f"res{stage}.{block}.conv{ord(letter) - ord('a') + 1}"


def _looks_like_caffe2(state_dict: Mapping[str, Any]) -> bool:
    return any(_C2_MARKER.fullmatch(k) for k in state_dict)


def caffe2_to_cvpods(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Caffe2 / Detectron (MSRA) names -> cvpods names.

    ``conv1_w`` -> ``stem.conv1.weight``; ``res_conv1_bn_{s,b}`` -> ``stem.conv1.norm.{weight,
    bias}``;
    ``resN_i_branch2{a,b,c}_w`` -> ``resN.i.conv{1,2,3}.weight`` and ``..._bn_{s,b}`` -> the conv's
    ``norm.{weight,bias}``; ``resN_i_branch1_*`` -> ``resN.i.shortcut.*``. Caffe2 stores frozen
    batch norms as an affine channel (scale ``_s``, bias ``_b``): each such norm also gets
    ``running_mean`` 0 and ``running_var`` 1 (the identity; see
    :func:`cvpods.checkpoint.DetectionCheckpointer` for the exact eps handling).

    Returns (renamed, prefixes of the affine norms, dropped names: ``fc1000_*``, ``*_momentum``).
    Names that match no rule are kept (and show up as unused when loading).
    """
    renamed: dict[str, torch.Tensor] = {}
    affine_norms: list[str] = []
    dropped: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("fc1000_") or key.endswith("_momentum"):
            dropped.append(key)
            continue
        new_key = _c2_rename(key)
        if new_key is None:
            renamed[key] = value
            continue
        renamed[new_key] = value
        if new_key.endswith(".norm.weight"):
            affine_norms.append(new_key[: -len(".weight")])
    for norm in affine_norms:
        scale = renamed[f"{norm}.weight"]
        renamed.setdefault(f"{norm}.running_mean", torch.zeros_like(scale))
        renamed.setdefault(f"{norm}.running_var", torch.ones_like(scale))
    return renamed, affine_norms, dropped


def _c2_rename(key: str) -> str | None:
    norm = re.fullmatch(r"(\w+?)_bn_([sb])", key)
    if norm:
        module = _c2_module(norm[1])
        return None if module is None else f"{module}.norm.{_C2_NORM_PARAM[norm[2]]}"
    param = re.fullmatch(r"(\w+)_([wb])", key)
    if param:
        module = _c2_module(param[1])
        return None if module is None else f"{module}.{_C2_PARAM[param[2]]}"
    return None
