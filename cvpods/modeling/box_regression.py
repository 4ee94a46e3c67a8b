"""Box encodings: locations (shifts) and boxes <-> (l, t, r, b) distances (FCOS), and boxes <->
(dx, dy, dw, dh) relative to anchors or proposals (R-CNN)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class Shift2BoxTransform:
    """Encode a box relative to a location ``(x, y)`` as the weighted distances ``(l, t, r, b)``.

    ``l = x - x0``, ``t = y - y0``, ``r = x1 - x``, ``b = y1 - y``, each times its weight.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> None:
        if len(weights) != 4:
            raise ValueError(f"MODEL.FCOS.BBOX_REG_WEIGHTS needs 4 values, got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)

    def get_deltas(self, shifts: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``shifts [..., 2]`` and ``boxes [..., 4]`` (broadcast) -> distances ``[..., 4]`` in pixels."""
        deltas = torch.cat((shifts - boxes[..., :2], boxes[..., 2:] - shifts), dim=-1)
        return deltas * deltas.new_tensor(self.weights)

    def apply_deltas(self, deltas: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`get_deltas`: ``deltas [N, 4]`` at ``shifts [N, 2]`` -> XYXY boxes ``[N, 4]``."""
        if deltas.numel() == 0:
            return torch.empty_like(deltas)
        deltas = deltas.view(deltas.size(0), -1, 4) / deltas.new_tensor(self.weights)
        boxes = torch.cat(
            (shifts.unsqueeze(-2) - deltas[..., :2], shifts.unsqueeze(-2) + deltas[..., 2:]), dim=-1
        )
        return boxes.view(deltas.size(0), -1)


#: Largest ``dw`` / ``dh`` applied by :class:`Box2BoxTransform` (a box grows at most 1000/16x).
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    """The R-CNN box coder: a target box relative to a source box as ``(dx, dy, dw, dh)``.

    ``dx = wx * (cx_t - cx_s) / w_s``, ``dy = wy * (cy_t - cy_s) / h_s``,
    ``dw = ww * log(w_t / w_s)``, ``dh = wh * log(h_t / h_s)`` with centres ``c`` and sizes
    ``w = x1 - x0``, ``h = y1 - y0`` (no +1). ``weights`` is ``(wx, wy, ww, wh)``: (1, 1, 1, 1) in
    the RPN, (10, 10, 5, 5) in the Fast R-CNN box head. Decoding clamps ``dw``, ``dh`` at
    ``scale_clamp`` before the exponential.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = _DEFAULT_SCALE_CLAMP) -> None:
        if len(weights) != 4:
            raise ValueError(f"BBOX_REG_WEIGHTS needs 4 values (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """``src_boxes [R, 4]``, ``target_boxes [R, 4]`` (XYXY) -> ``deltas [R, 4]``."""
        src_w = src_boxes[:, 2] - src_boxes[:, 0]
        src_h = src_boxes[:, 3] - src_boxes[:, 1]
        src_x = src_boxes[:, 0] + 0.5 * src_w
        src_y = src_boxes[:, 1] + 0.5 * src_h
        tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
        tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
        tgt_x = target_boxes[:, 0] + 0.5 * tgt_w
        tgt_y = target_boxes[:, 1] + 0.5 * tgt_h
        wx, wy, ww, wh = self.weights
        return torch.stack(
            (
                wx * (tgt_x - src_x) / src_w,
                wy * (tgt_y - src_y) / src_h,
                ww * torch.log(tgt_w / src_w),
                wh * torch.log(tgt_h / src_h),
            ),
            dim=1,
        )

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``deltas [R, 4k]`` (k boxes per row, e.g. one per class) on ``boxes [R, 4]`` -> ``[R, 4k]``."""
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        pred = torch.stack(
            (
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w,
                pred_ctr_y + 0.5 * pred_h,
            ),
            dim=2,
        )
        return pred.reshape(deltas.shape)
