"""Single-image prediction for the demo: test-time transforms, the model, and gate capture."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from cvpods.checkpoint import DEFAULT_MIN_MATCHED_FRACTION, DetectionCheckpointer
from cvpods.data.transforms import apply_augmentations, build_augmentations
from cvpods.layers import DynamicDepthCell
from cvpods.structures import Instances


@dataclass
class Prediction:
    """What the demo shows for one image."""

    instances: Instances
    seconds: float
    head_gflops: float | None = None
    # Per level (finest first): fraction of depth cells computed at each position, [h_l, w_l] in [0, 1].
    gate_maps: list[np.ndarray] = field(default_factory=list)


class DepthGateRecorder:
    """Forward hooks on every dynamic depth cell's gate: which positions each cell computes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.maps: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.handles = [
            m.gate.register_forward_hook(self._record)
            for m in model.modules()
            if isinstance(m, DynamicDepthCell)
        ]

    def _record(self, module, inputs, gate: torch.Tensor) -> None:
        computed = (gate[0] != 0).any(dim=0).float()
        self.maps.setdefault(tuple(computed.shape), []).append(computed)

    def take(self, image_hw: tuple[int, int], strides: list[int]) -> list[np.ndarray]:
        """The maps of the last image, finest level first, then forget them.

        Each map is cropped to the cells that cover the ``image_hw`` network input (the rest
        covers the padding up to the backbone's size divisibility).
        """
        levels = sorted(self.maps, key=lambda hw: -hw[0] * hw[1])
        result = []
        for hw, stride in zip(levels, strides):
            level_map = torch.stack(self.maps[hw]).mean(0)
            rows, cols = math.ceil(image_hw[0] / stride), math.ceil(image_hw[1] / stride)
            result.append(level_map[:rows, :cols].cpu().numpy())
        self.maps = {}
        return result


class Predictor:
    """``predictor(image_bgr) -> Prediction`` for an experiment's config and ``build_model``.

    Raises :class:`~cvpods.checkpoint.WeightsMismatchError` when MODEL.WEIGHTS fills less than
    MODEL.WEIGHTS_MIN_MATCHED_FRACTION of the model's tensors (another architecture's weights).
    """

    def __init__(self, cfg, build_model, record_gates: bool = False) -> None:
        self.cfg = cfg
        self.model = build_model(cfg)
        self.model.eval()
        min_fraction = cfg.MODEL.get("WEIGHTS_MIN_MATCHED_FRACTION", DEFAULT_MIN_MATCHED_FRACTION)
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS, min_matched_fraction=min_fraction)
        self.augmentations = build_augmentations(cfg.INPUT.AUG.TEST_PIPELINES)
        self.input_format = cfg.INPUT.FORMAT
        self.gates = DepthGateRecorder(self.model) if record_gates else None
        self.rng = np.random.default_rng(0)

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray) -> Prediction:
        """``image_bgr``: ``[H, W, 3]`` uint8 as OpenCV reads it; boxes come back at ``H x W``."""
        height, width = image_bgr.shape[:2]
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        image, _ = apply_augmentations(self.augmentations, np.ascontiguousarray(image), self.rng)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        start = time.perf_counter()
        output = self.model([{"image": tensor, "height": height, "width": width}])[0]
        seconds = time.perf_counter() - start
        meter = getattr(self.model, "head_complexity", None)
        gflops = meter.values()[-1] if meter is not None and meter.values() else None
        gate_maps = (
            self.gates.take(tensor.shape[-2:], self.model.head.fpn_strides) if self.gates else []
        )
        return Prediction(output["instances"].to("cpu"), seconds, gflops, gate_maps)
