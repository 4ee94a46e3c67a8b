"""Generalized R-CNN: backbone -> proposal generator (RPN) -> ROI heads (Faster R-CNN with FPN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...configs import configurable
from ...layers import ShapeSpec
from ...structures import ImageList
from ..backbone import Backbone, build_resnet_fpn_backbone
from ..postprocessing import (
    normalize_and_pad,
    per_image_head_outputs,
    postprocess_batch,
    register_pixel_normalization,
)
from ..proposal_generator import RPN
from ..roi_heads import StandardROIHeads
from .build import META_ARCH_REGISTRY


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(nn.Module):
    """A two-stage detector with cvpods' structure and state-dict names: ``backbone.*``,
    ``proposal_generator.*`` (:class:`~cvpods.modeling.proposal_generator.RPN`) and
    ``roi_heads.*`` (:class:`~cvpods.modeling.roi_heads.StandardROIHeads`).

    Called like every cvpods model: ``model(batched_inputs)`` with dicts holding ``image``
    (``[3, H, W]`` in INPUT.FORMAT, 0..255), ``instances`` (``gt_boxes``, ``gt_classes``; training)
    and optional ``height`` / ``width``. Training returns the losses of both stages; evaluation
    returns ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` at ``height x width``.

    With a dynamic RPN head (MODEL.RPN.HEAD_NAME "DynamicRPNHead") the outputs also carry the RPN
    head's cost, ``"head_cost"`` (as FCOS does for its dynamic head): a
    :class:`~cvpods.layers.GateCost` of ``[N]`` MACs in the training losses, of 0-d tensors in each
    image's results; ``inference(..., return_gate_maps=True)`` adds the ``"gate_maps"`` and
    ``"fusion_gate_maps"``.

    Build it from a config, ``GeneralizedRCNN(cfg)`` (optionally with ``backbone=`` a built
    backbone), or with keyword arguments:

    Args:
        backbone: a :class:`~cvpods.modeling.backbone.Backbone` (its outputs feed both stages).
        proposal_generator: the :class:`~cvpods.modeling.proposal_generator.RPN`.
        roi_heads: the :class:`~cvpods.modeling.roi_heads.StandardROIHeads`.
        pixel_mean, pixel_std: per-channel normalisation (INPUT.FORMAT order, 0..255 units).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads

        register_pixel_normalization(self, pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg, backbone: Backbone | None = None) -> dict:
        """The keyword arguments from the config: the backbone (default: ResNet-FPN of the
        config), ``RPN(cfg, ...)`` and ``StandardROIHeads(cfg, ...)`` on its outputs,
        MODEL.PIXEL_MEAN / PIXEL_STD."""
        if backbone is None:
            backbone = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        shapes = backbone.output_shape()
        return dict(
            backbone=backbone,
            proposal_generator=RPN(cfg, shapes),
            roi_heads=StandardROIHeads(cfg, shapes),
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (the caller moves the model: ``model.to(device)``)."""
        return self.pixel_mean.device

    @property
    def head(self) -> nn.Module:
        """The gated head of this detector (the RPN head), for tools that inspect heads."""
        return self.proposal_generator.rpn_head

    def forward(
        self, batched_inputs: list[dict], return_gate_maps: bool = False
    ) -> dict[str, torch.Tensor] | list[dict]:
        """Losses (training; ``return_gate_maps`` is ignored) or :meth:`inference` results."""
        if not self.training:
            return self.inference(batched_inputs, return_gate_maps=return_gate_maps)
        if "instances" not in batched_inputs[0]:
            raise ValueError(
                "GeneralizedRCNN in training mode needs 'instances' (gt_boxes, gt_classes) in every input"
            )
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        return {**detector_losses, **proposal_losses}

    @torch.no_grad()
    def inference(
        self,
        batched_inputs: list[dict],
        do_postprocess: bool = True,
        return_gate_maps: bool = False,
    ) -> list:
        """Detections per image.

        Args:
            batched_inputs: one dict per image (see the class docstring).
            do_postprocess: rescale to each input's ``height`` x ``width`` and return dicts;
                False: return Instances in input-image coordinates (nothing else).
            return_gate_maps: also return a gated RPN head's gate maps.

        Returns:
            per image ``{"instances": Instances}`` plus, for a dynamic RPN head,
            ``"head_cost"`` (GateCost of 0-d tensors, MACs) and on request ``"gate_maps"`` and
            ``"fusion_gate_maps"`` (per level ``[ceil(H / s), ceil(W / s)]`` in [0, 1]: the
            fraction of depth cells / scale-fusion units computed).
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, rpn_outputs = self.proposal_generator(
            images, features, None, return_gate_maps=return_gate_maps
        )
        results, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return results
        processed = postprocess_batch(results, batched_inputs, images.image_sizes)
        extras = per_image_head_outputs(
            rpn_outputs.get("head_cost"),
            rpn_outputs.get("gate_maps"),
            images.image_sizes,
            self.proposal_generator.rpn_head.fpn_strides,
            fusion_gate_maps=rpn_outputs.get("fusion_gate_maps"),
        )
        return [{**result, **extra} for result, extra in zip(processed, extras)]

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise each image and pad the batch to the backbone's size divisibility."""
        return normalize_and_pad(
            batched_inputs, self.pixel_mean, self.pixel_std, self.backbone.size_divisibility,
            self.device,
        )  # fmt: skip


__all__ = ["GeneralizedRCNN"]
