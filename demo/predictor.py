"""Single-image prediction for the demo: test-time transforms, the model, and the head's cost and
gate maps read from the model's outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from cvpods.checkpoint import DEFAULT_MIN_MATCHED_FRACTION, DetectionCheckpointer
from cvpods.data.transforms import apply_augmentations, build_augmentations
from cvpods.modeling.meta_arch.head_complexity import MACS_PER_GFLOP
from cvpods.structures import Instances


@dataclass
class Prediction:
    """What the demo shows for one image."""

    instances: Instances
    seconds: float
    head_gflops: float | None = None
    # Per level (finest first): fraction of depth cells computed at each position, [h_l, w_l] in [0, 1].
    gate_maps: list[np.ndarray] = field(default_factory=list)
    # The same for the scale-fusion units (the model's "fusion_gate_maps").
    fusion_gate_maps: list[np.ndarray] = field(default_factory=list)
    # The gated head's level strides (pixels, finest first; empty when unknown) and the network
    # input's unpadded (height, width): where each gate-map cell lies on the image.
    strides: list[int] = field(default_factory=list)
    input_size: tuple[int, int] | None = None


class Predictor:
    """``predictor(image_bgr) -> Prediction`` for an experiment's config and ``build_model``.

    The model is moved to MODEL.DEVICE. With ``record_gates`` the model is asked for its gate
    maps (``model(inputs, return_gate_maps=True)``); a static head returns none.

    Raises :class:`~cvpods.checkpoint.WeightsMismatchError` when MODEL.WEIGHTS fills less than
    MODEL.WEIGHTS_MIN_MATCHED_FRACTION of the model's tensors (another architecture's weights).
    """

    def __init__(self, cfg, build_model, record_gates: bool = False) -> None:
        self.cfg = cfg
        self.model = build_model(cfg).to(torch.device(cfg.MODEL.DEVICE))
        self.model.eval()
        min_fraction = cfg.MODEL.get("WEIGHTS_MIN_MATCHED_FRACTION", DEFAULT_MIN_MATCHED_FRACTION)
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS, min_matched_fraction=min_fraction)
        self.augmentations = build_augmentations(cfg.INPUT.AUG.TEST_PIPELINES)
        self.input_format = cfg.INPUT.FORMAT
        self.record_gates = record_gates
        self.rng = np.random.default_rng(0)

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray) -> Prediction:
        """``image_bgr``: ``[H, W, 3]`` uint8 as OpenCV reads it; boxes come back at ``H x W``."""
        height, width = image_bgr.shape[:2]
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        image, _ = apply_augmentations(self.augmentations, np.ascontiguousarray(image), self.rng)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        start = time.perf_counter()
        inputs = [{"image": tensor, "height": height, "width": width}]
        if self.record_gates:
            output = self.model(inputs, return_gate_maps=True)[0]
        else:
            output = self.model(inputs)[0]
        seconds = time.perf_counter() - start
        cost = output.get("head_cost")
        gflops = float(cost.used.double()) / MACS_PER_GFLOP if cost is not None else None
        gate_maps = [m.float().cpu().numpy() for m in output.get("gate_maps", [])]
        fusion_maps = [m.float().cpu().numpy() for m in output.get("fusion_gate_maps", [])]
        strides = list(getattr(getattr(self.model, "head", None), "fpn_strides", None) or [])
        return Prediction(
            output["instances"].to("cpu"),
            seconds,
            gflops,
            gate_maps,
            fusion_maps,
            [int(s) for s in strides] if len(strides) == len(gate_maps) else [],
            tuple(tensor.shape[-2:]),
        )
