"""Input conventions that ImageNet-pretrained weights were trained with, checked against a config.

MSRA (Caffe2 / Detectron) ResNets were trained on BGR images in 0..255 with the mean subtracted
and no division (std 1), and put the stride of a bottleneck's first block in its 1x1 conv.
torchvision ResNets were trained on RGB images normalised with the ImageNet mean/std of 0..1 pixels
(x 255 below, since cvpods normalises 0..255 pixels) and put the stride in the 3x3 conv. A backbone
loaded with the other family's settings still runs, but its features are wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .weight_formats import CAFFE2, TORCHVISION

__all__ = ["CONVENTIONS", "MSRA", "TORCHVISION_CONVENTION", "convention_of", "config_disagreements"]

MSRA = "MSRA"
TORCHVISION_CONVENTION = "torchvision"

# Convention name -> the config values it needs (dotted keys).
CONVENTIONS: dict[str, dict[str, Any]] = {
    MSRA: {
        "INPUT.FORMAT": "BGR",
        "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
        "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
        "MODEL.RESNETS.STRIDE_IN_1X1": True,
    },
    TORCHVISION_CONVENTION: {
        "INPUT.FORMAT": "RGB",
        "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
        "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
    },
}


def convention_of(naming: str, author: str = "") -> str | None:
    """The input convention implied by a file's tensor naming and ``__author__`` (None: unknown).

    Caffe2 names are MSRA weights; torchvision names (or a detectron2 conversion whose author is
    "torchvision") are torchvision weights; cvpods names are a trained detector, whose convention
    is whatever its config was, so nothing is implied.
    """
    if naming == CAFFE2 or author.strip().lower() in ("caffe2", "msra"):
        return MSRA
    if naming == TORCHVISION or author.strip().lower() == "torchvision":
        return TORCHVISION_CONVENTION
    return None


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        try:
            return len(value) == len(expected) and all(
                abs(float(a) - b) < 1e-3 for a, b in zip(value, expected)
            )
        except TypeError:
            return False
    return value == expected


def config_disagreements(cfg: Mapping, convention: str) -> list[str]:
    """``"KEY is X; <convention> weights expect Y"`` for every config value the convention dislikes.

    Keys the config does not have are not reported.
    """
    problems = []
    for key, expected in CONVENTIONS[convention].items():
        try:
            value = _get(cfg, key)
        except KeyError:
            continue
        if not _same(value, expected):
            problems.append(f"{key} is {value!r}; {convention} weights expect {expected!r}")
    return problems
