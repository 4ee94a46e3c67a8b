"""FCOS: Fully Convolutional One-Stage object detection (Tian et al., ICCV 2019).

Every location of every FPN level predicts K class logits, the distances (l, t, r, b) from the
location to the four sides of a box, and a centerness logit. Training assigns each location to
the smallest ground-truth box that contains it (optionally only near the box centre) and whose
size suits the location's level; inference keeps the top candidates per level, scores them by
``sqrt(class probability x centerness)`` and applies class-aware NMS.

:class:`FCOS` takes its parts and settings as keyword arguments, or a config (``FCOS(cfg)``, read
by :meth:`FCOS.from_config`, which builds the head named by MODEL.FCOS.HEAD_NAME).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, sigmoid_focal_loss

from ...configs import configurable
from ...layers import GateCost, ShapeSpec
from ...structures import Boxes, ImageList, Instances
from ...utils import comm
from ...utils.events import put_scalar_if_recording
from ..backbone import Backbone, build_retinanet_resnet_fpn_backbone
from ..box_regression import Shift2BoxTransform
from ..losses import budget_loss, iou_loss
from ..postprocessing import (
    batch_head_cost,
    normalize_and_pad,
    per_image_head_outputs,
    postprocess_batch,
    register_pixel_normalization,
)
from ..shift_generator import ShiftGenerator
from .build import META_ARCH_REGISTRY
from .fcos_heads import FCOS_HEAD_REGISTRY, FCOSHeadOutputs

logger = logging.getLogger(__name__)


def flatten_levels(per_level: list[torch.Tensor]) -> torch.Tensor:
    """Levels of ``[N, K, h_l, w_l]`` -> ``[N, R, K]`` with R = sum of h_l * w_l (row-major)."""
    return torch.cat(
        [x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]) for x in per_level], dim=1
    )


def _check_sizes_of_interest(sizes: Sequence, in_features: Sequence[str]) -> None:
    if len(sizes) != len(in_features):
        raise ValueError(
            f"MODEL.FCOS.OBJECT_SIZES_OF_INTEREST has {len(sizes)} ranges "
            f"for {len(in_features)} levels (MODEL.FCOS.IN_FEATURES)"
        )


def _level_shapes(backbone: Backbone, in_features: Sequence[str]) -> list[ShapeSpec]:
    """The backbone's output shapes of ``in_features``, in that order (a ValueError naming the
    features the backbone lacks)."""
    shapes = backbone.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.FCOS.IN_FEATURES {missing} are not backbone outputs {list(shapes)}"
        )
    return [shapes[f] for f in in_features]


@META_ARCH_REGISTRY.register()
class FCOS(nn.Module):
    """The FCOS detector: a backbone (ResNet-FPN by default), an FCOS head and FCOS's targets,
    losses and inference.

    Call it cvpods-style: ``model(batched_inputs)`` with a list of dicts holding ``image``
    (``[3, H, W]`` in INPUT.FORMAT, 0..255), ``instances`` (``gt_boxes``, ``gt_classes``; training)
    and optional ``height`` / ``width`` (output resolution). Training returns a dict of losses;
    evaluation returns ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]``.

    Build it from a config, ``FCOS(cfg)`` (optionally ``backbone=`` a built backbone and
    ``head_cls=`` a head class instead of MODEL.FCOS.HEAD_NAME), or with keyword arguments:

    Args:
        backbone: a :class:`~cvpods.modeling.backbone.Backbone` whose outputs include
            ``in_features``.
        head: an FCOS head for those levels (e.g. :class:`FCOSHead`): ``head(features,
            return_gate_maps)`` returns :class:`FCOSHeadOutputs`.
        in_features: the backbone outputs the head reads, finest first (e.g. p3..p7).
        num_classes: K foreground classes (class index K is background in the targets).
        object_sizes_of_interest: per level, the ``[min, max]`` range of ``max(l, t, r, b)`` in
            input pixels that the level is responsible for.
        shift_generator: the locations of every level (its ``strides`` are the levels' strides).
        shift2box_transform: encodes boxes as distances (l, t, r, b) from a location and back.
        focal_loss_alpha, focal_loss_gamma: the focal loss of the class logits.
        iou_loss_type: ``"iou"``, ``"linear_iou"`` or ``"giou"`` (the box loss).
        score_threshold: inference keeps candidates whose class probability is above this.
        topk_candidates: inference keeps at most this many candidates per level (before NMS).
        nms_threshold: IoU of class-aware NMS.
        max_detections_per_image: detections kept per image after NMS.
        pixel_mean, pixel_std: per-channel normalisation (INPUT.FORMAT order, 0..255 units).
        center_sampling_radius: foreground only within this many strides of a box centre
            (0: anywhere inside the box).
        budget_loss_lambda: weight of the gated head's budget loss (0: none).
        budget_loss_warmup_iters: iterations over which that weight ramps up from 0.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        in_features: Sequence[str],
        num_classes: int,
        object_sizes_of_interest: Sequence[Sequence[float]],
        shift_generator: ShiftGenerator,
        shift2box_transform: Shift2BoxTransform,
        focal_loss_alpha: float,
        focal_loss_gamma: float,
        iou_loss_type: str,
        score_threshold: float,
        topk_candidates: int,
        nms_threshold: float,
        max_detections_per_image: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        center_sampling_radius: float = 0.0,
        budget_loss_lambda: float = 0.0,
        budget_loss_warmup_iters: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_features = list(in_features)
        self.fpn_strides = list(shift_generator.strides)
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.iou_loss_type = iou_loss_type
        self.center_sampling_radius = center_sampling_radius
        self.object_sizes_of_interest = [list(map(float, r)) for r in object_sizes_of_interest]
        self.budget_loss_lambda = budget_loss_lambda
        self.budget_loss_warmup_iters = budget_loss_warmup_iters
        self.score_threshold = score_threshold
        self.topk_candidates = topk_candidates
        self.nms_threshold = nms_threshold
        self.max_detections_per_image = max_detections_per_image
        _check_sizes_of_interest(self.object_sizes_of_interest, self.in_features)
        _level_shapes(backbone, self.in_features)

        self.backbone = backbone
        self.head = head
        self.shift_generator = shift_generator
        self.shift2box_transform = shift2box_transform

        register_pixel_normalization(self, pixel_mean, pixel_std)

    @classmethod
    def from_config(
        cls,
        cfg,
        backbone: Backbone | None = None,
        head_cls: type[nn.Module] | None = None,
    ) -> dict:
        """The keyword arguments of ``FCOS`` from MODEL.FCOS, MODEL.SHIFT_GENERATOR,
        MODEL.PIXEL_MEAN / PIXEL_STD and TEST.DETECTIONS_PER_IMAGE.

        Args:
            cfg: the config.
            backbone: a built backbone (default: the RetinaNet-style ResNet-FPN of the config).
            head_cls: the head class (default: MODEL.FCOS.HEAD_NAME in FCOS_HEAD_REGISTRY),
                built as ``head_cls(cfg, level_shapes)``.
        """
        fcos = cfg.MODEL.FCOS
        in_features = list(fcos.IN_FEATURES)
        _check_sizes_of_interest(fcos.OBJECT_SIZES_OF_INTEREST, in_features)
        if head_cls is None:
            head_cls = FCOS_HEAD_REGISTRY.get(fcos.get("HEAD_NAME", "FCOSHead"))
        if backbone is None:
            backbone = build_retinanet_resnet_fpn_backbone(
                cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
            )
        head = head_cls(cfg, _level_shapes(backbone, in_features))
        return dict(
            backbone=backbone,
            head=head,
            in_features=in_features,
            num_classes=fcos.NUM_CLASSES,
            object_sizes_of_interest=fcos.OBJECT_SIZES_OF_INTEREST,
            shift_generator=ShiftGenerator(
                list(fcos.FPN_STRIDES),
                cfg.MODEL.SHIFT_GENERATOR.OFFSET,
                cfg.MODEL.SHIFT_GENERATOR.NUM_SHIFTS,
            ),
            shift2box_transform=Shift2BoxTransform(fcos.BBOX_REG_WEIGHTS),
            focal_loss_alpha=fcos.FOCAL_LOSS_ALPHA,
            focal_loss_gamma=fcos.FOCAL_LOSS_GAMMA,
            iou_loss_type=fcos.IOU_LOSS_TYPE,
            score_threshold=fcos.SCORE_THRESH_TEST,
            topk_candidates=fcos.TOPK_CANDIDATES_TEST,
            nms_threshold=fcos.NMS_THRESH_TEST,
            max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            center_sampling_radius=fcos.CENTER_SAMPLING_RADIUS,
            budget_loss_lambda=fcos.BUDGET_LOSS_LAMBDA,
            budget_loss_warmup_iters=fcos.get("BUDGET_LOSS_WARMUP_ITERS", 0),
        )

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (the caller moves the model: ``model.to(device)``)."""
        return self.pixel_mean.device

    # ------------------------------------------------------------------ forward
    def forward(
        self, batched_inputs: list[dict], return_gate_maps: bool = False
    ) -> dict[str, torch.Tensor | GateCost] | list[dict]:
        """Losses (training) or detections (evaluation) for a batch.

        Args:
            batched_inputs: one dict per image (see the class docstring).
            return_gate_maps: at evaluation, also return a gated head's gate maps.

        Returns:
            training: ``{"loss_cls", "loss_box_reg", "loss_centerness"[, "loss_budget"]}``
            (scalar tensors) plus ``"head_cost"`` (a :class:`~cvpods.layers.GateCost` of ``[N]``
            MACs, detached) for a gated head. Evaluation: per image ``{"instances": Instances}``
            plus, for a gated head, ``"head_cost"`` (GateCost of 0-d tensors, MACs) and, on
            request, ``"gate_maps"`` (per level ``[ceil(H / s), ceil(W / s)]`` in [0, 1]: the
            fraction of depth cells computed at each cell covering the network input) and
            ``"fusion_gate_maps"`` (the same for the scale-fusion units).
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.in_features]
        outputs: FCOSHeadOutputs = self.head(
            features, return_gate_maps=return_gate_maps and not self.training
        )
        shifts = self.shift_generator(features)

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError(
                    "FCOS in training mode needs 'instances' (gt_boxes, gt_classes) in every input"
                )
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            targets = self.get_ground_truth(shifts, gt_instances)
            return {**self.losses(*targets, outputs), **batch_head_cost(outputs.cost)}

        results = self.inference(outputs, shifts, images.image_sizes)
        processed = postprocess_batch(results, batched_inputs, images.image_sizes)
        extras = per_image_head_outputs(
            outputs.cost,
            outputs.gate_maps,
            images.image_sizes,
            self.fpn_strides,
            fusion_gate_maps=outputs.fusion_gate_maps,
        )
        return [{**result, **extra} for result, extra in zip(processed, extras)]

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise each image and pad the batch to the backbone's size divisibility."""
        return normalize_and_pad(
            batched_inputs, self.pixel_mean, self.pixel_std, self.backbone.size_divisibility,
            self.device,
        )  # fmt: skip

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def get_ground_truth(
        self, shifts: list[list[torch.Tensor]], targets: list[Instances]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FCOS targets for all R locations of all levels.

        Returns ``gt_classes [N, R]`` (int64; ``num_classes`` = background),
        ``gt_shifts_deltas [N, R, 4]`` (l, t, r, b in pixels to the matched box) and
        ``gt_centerness [N, R]`` (in [0, 1]; meaningful on foreground only).
        """
        gt_classes, gt_deltas, gt_centerness = [], [], []
        # The shift generator hands every image the same list of levels: its locations, size
        # ranges and sampling radii are laid out once per batch, not once per image.
        tables: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for shifts_per_image, targets_per_image in zip(shifts, targets):
            key = id(shifts_per_image)
            if key not in tables:
                tables[key] = self._location_table(shifts_per_image)
            classes, deltas, centerness = self._match_image(tables[key], targets_per_image)
            gt_classes.append(classes)
            gt_deltas.append(deltas)
            gt_centerness.append(centerness)
        return torch.stack(gt_classes), torch.stack(gt_deltas), torch.stack(gt_centerness)

    def _location_table(
        self, shifts_per_level: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """All levels' locations ``[R, 2]``, each location's ``[min, max]`` size range ``[R, 2]``
        and, with centre sampling, its sampling radius in pixels ``[R, 1]`` (its level's stride
        times CENTER_SAMPLING_RADIUS; None without)."""
        shifts = torch.cat(shifts_per_level, dim=0)
        num_levels = len(shifts_per_level)  # the first levels, when fewer are given
        counts = torch.tensor([s.shape[0] for s in shifts_per_level], device=shifts.device)
        size_ranges = shifts.new_tensor(
            self.object_sizes_of_interest[:num_levels]
        ).repeat_interleave(counts, dim=0)
        radius = None
        if self.center_sampling_radius > 0:
            strides = self.fpn_strides[:num_levels]
            radii = shifts.new_tensor([stride * self.center_sampling_radius for stride in strides])
            radius = radii.repeat_interleave(counts)[:, None]
        return shifts, size_ranges, radius

    def _match_image(
        self,
        table: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        targets: Instances,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image's targets over the locations of :meth:`_location_table` (``table``):
        ``classes [R]``, ``deltas [R, 4]``, ``centerness [R]``, every level at once.

        A location takes the smallest box that contains it (near its centre, with centre
        sampling) and whose size suits the location's level, the first of equal ones; locations
        without one are background, with the deltas and centerness of the first box.
        """
        shifts, size_ranges, radius = table
        num_shifts = shifts.shape[0]
        gt_boxes = targets.gt_boxes
        if len(targets) == 0:
            # No ground truth: every location is background (the release crashes here).
            return (
                torch.full(
                    (num_shifts,), self.num_classes, dtype=torch.int64, device=shifts.device
                ),
                shifts.new_zeros(num_shifts, 4),
                shifts.new_zeros(num_shifts),
            )
        boxes = gt_boxes.tensor  # [M, 4]
        deltas = self.shift2box_transform.get_deltas(shifts, boxes.unsqueeze(1))  # [M, R, 4]

        if radius is not None:
            # Foreground only within `radius` of the box centre (and inside the box).
            centers = gt_boxes.get_centers().unsqueeze(1)  # [M, 1, 2]
            center_boxes = torch.cat(
                (
                    torch.max(centers - radius, boxes[:, None, :2]),
                    torch.min(centers + radius, boxes[:, None, 2:]),
                ),
                dim=-1,
            )  # [M, R, 4]
            center_deltas = self.shift2box_transform.get_deltas(shifts, center_boxes)
            is_in_boxes = center_deltas.min(dim=-1).values > 0
        else:
            is_in_boxes = deltas.min(dim=-1).values > 0

        max_deltas = deltas.max(dim=-1).values  # [M, R]
        in_size_range = (max_deltas >= size_ranges[:, 0]) & (max_deltas <= size_ranges[:, 1])
        areas = torch.where(
            is_in_boxes & in_size_range, gt_boxes.area()[:, None], math.inf
        )  # [M, R]
        # Several candidate boxes: the smallest one wins (the first of equal ones).
        min_area, matched = areas.min(dim=0)

        matched_deltas = deltas[matched, torch.arange(num_shifts, device=matched.device)]
        classes = targets.gt_classes[matched].clone()
        classes[min_area == math.inf] = self.num_classes
        left_right = matched_deltas[:, [0, 2]]
        top_bottom = matched_deltas[:, [1, 3]]
        centerness = torch.sqrt(
            (left_right.min(dim=-1).values / left_right.max(dim=-1).values).clamp_(min=0)
            * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values).clamp_(min=0)
        )
        return classes, matched_deltas, centerness

    def losses(
        self,
        gt_classes: torch.Tensor,
        gt_shifts_deltas: torch.Tensor,
        gt_centerness: torch.Tensor,
        outputs: FCOSHeadOutputs,
    ) -> dict[str, torch.Tensor]:
        """Focal loss (per foreground location), centerness-weighted IoU loss and centerness BCE;
        plus ``loss_budget = lambda * mean(soft cost / full cost)`` for a dynamic head with lambda != 0.

        Normalisers are averaged over all processes.
        """
        logits = flatten_levels(outputs.logits).reshape(-1, self.num_classes)
        deltas = flatten_levels(outputs.bbox_reg).reshape(-1, 4)
        centerness = flatten_levels(outputs.centerness).reshape(-1)
        gt_classes = gt_classes.flatten()
        gt_shifts_deltas = gt_shifts_deltas.reshape(-1, 4)
        gt_centerness = gt_centerness.flatten()

        valid = gt_classes >= 0
        foreground = valid & (gt_classes != self.num_classes)
        world_size = float(comm.get_world_size())
        num_foreground = comm.all_reduce(foreground.sum().to(torch.float32)).item() / world_size
        centerness_sum = comm.all_reduce(gt_centerness[foreground].sum()).item() / world_size

        cls_targets = torch.zeros_like(logits)
        cls_targets[foreground, gt_classes[foreground]] = 1
        loss_cls = sigmoid_focal_loss(
            logits[valid],
            cls_targets[valid],
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        ) / max(1.0, num_foreground)
        loss_box_reg = iou_loss(
            deltas[foreground],
            gt_shifts_deltas[foreground],
            gt_centerness[foreground],
            loss_type=self.iou_loss_type,
            reduction="sum",
        ) / max(1.0, centerness_sum)
        loss_centerness = F.binary_cross_entropy_with_logits(
            centerness[foreground], gt_centerness[foreground], reduction="sum"
        ) / max(1.0, num_foreground)
        losses = {
            "loss_cls": loss_cls,
            "loss_box_reg": loss_box_reg,
            "loss_centerness": loss_centerness,
        }

        cost = outputs.cost
        if cost is not None:
            put_scalar_if_recording("complexity_ratio", (cost.used / cost.full).mean().item())
            if self.budget_loss_lambda != 0:
                losses["loss_budget"] = budget_loss(
                    cost, self.budget_loss_lambda, self.budget_loss_warmup_iters
                )
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(
        self,
        outputs: FCOSHeadOutputs,
        shifts: list[list[torch.Tensor]],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Instances]:
        """Detections per image, in the coordinates of the (unpadded) network input."""
        logits = [flatten_levels([x]) for x in outputs.logits]
        deltas = [flatten_levels([x]) for x in outputs.bbox_reg]
        centerness = [flatten_levels([x]) for x in outputs.centerness]
        return [
            self.inference_single_image(
                [x[i] for x in logits],
                [x[i] for x in deltas],
                [x[i] for x in centerness],
                shifts[i],
                tuple(size),
            )
            for i, size in enumerate(image_sizes)
        ]

    def inference_single_image(
        self,
        logits: list[torch.Tensor],
        deltas: list[torch.Tensor],
        centerness: list[torch.Tensor],
        shifts: list[torch.Tensor],
        image_size: tuple[int, int],
    ) -> Instances:
        """Per level ``logits [R_l, K]``, ``deltas [R_l, 4]``, ``centerness [R_l, 1]``, ``shifts [R_l, 2]``."""
        boxes_all, scores_all, classes_all = [], [], []
        for logits_l, deltas_l, centerness_l, shifts_l in zip(logits, deltas, centerness, shifts):
            probs = logits_l.flatten().sigmoid()
            num_topk = min(self.topk_candidates, deltas_l.size(0))
            probs, candidates = probs.sort(descending=True)
            probs, candidates = probs[:num_topk], candidates[:num_topk]
            keep = probs > self.score_threshold
            probs, candidates = probs[keep], candidates[keep]
            locations = candidates // self.num_classes
            classes = candidates % self.num_classes
            boxes = self.shift2box_transform.apply_deltas(deltas_l[locations], shifts_l[locations])
            scores = torch.sqrt(probs * centerness_l.flatten().sigmoid()[locations])
            boxes_all.append(boxes)
            scores_all.append(scores)
            classes_all.append(classes)
        boxes, scores, classes = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(classes_all)
        keep = batched_nms(boxes, scores, classes, self.nms_threshold)[
            : self.max_detections_per_image
        ]
        return Instances(
            image_size,
            pred_boxes=Boxes(boxes[keep]),
            scores=scores[keep],
            pred_classes=classes[keep],
        )
