"""Axis-aligned boxes (:class:`Boxes`), box formats (:class:`BoxMode`) and box overlaps.

The names and behaviour follow cvpods/detectron2, so code written for them works unchanged:
``Boxes`` holds absolute XYXY pixel boxes, ``BoxMode.convert`` translates between formats and
returns the type it was given, and the overlap functions return 0 (never NaN) for boxes that do
not intersect.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_convert

__all__ = [
    "BoxMode",
    "Boxes",
    "StructureError",
    "matched_boxlist_iou",
    "pairwise_intersection",
    "pairwise_ioa",
    "pairwise_iou",
]


class StructureError(AssertionError, ValueError):
    """A misuse of a structure. cvpods raises ``AssertionError`` in these places; this is both an
    AssertionError (for code written against cvpods) and a ValueError."""


class _StructureIndexError(StructureError, IndexError):
    """An index that does not select a list of boxes (also an IndexError)."""


_RELATIVE = "Relative mode not yet supported!"


class BoxMode(IntEnum):
    """How the four (or five) numbers of a box are to be read.

    ``XYXY_ABS``: ``(x0, y0, x1, y1)`` in pixels. ``XYWH_ABS``: ``(x0, y0, width, height)`` in
    pixels, as in COCO json. ``XYXY_REL`` / ``XYWH_REL``: the same relative to the image size (not
    convertible, as in cvpods). ``XYWHA_ABS``: ``(x_center, y_center, width, height, angle)``, the
    angle in degrees counter-clockwise.

    The values are the integers cvpods/detectron2 use (0..4), so a ``bbox_mode`` stored as an int
    in a cached dataset json reads back as the same mode.
    """

    XYXY_ABS = 0
    XYWH_ABS = 1
    XYXY_REL = 2
    XYWH_REL = 3
    XYWHA_ABS = 4

    @staticmethod
    def convert(box: Any, from_mode: BoxMode | int, to_mode: BoxMode | int) -> Any:
        """``box`` converted from ``from_mode`` to ``to_mode``, in the type it came in.

        Args:
            box: one box as a list or tuple of 4 (or 5) numbers, or ``[N, 4]`` (or ``[N, 5]``)
                boxes as a tensor or numpy array.
            from_mode, to_mode: :class:`BoxMode` members (or their integer values).

        Returns:
            a list/tuple for a list/tuple (element types as ``torch.tensor(box)`` gives them, so
            integer boxes stay integers), a new numpy array or tensor otherwise; ``box`` itself
            when the modes are equal. The input is never modified.

        Raises:
            StructureError (an AssertionError): a list/tuple that is not 4 or 5 long, a relative
                mode, or XYWHA input that is not 5 wide.
            NotImplementedError: a pair of modes without a conversion (anything from or to
                XYWHA_ABS other than XYWHA_ABS -> XYXY_ABS and XYWH_ABS -> XYWHA_ABS).
        """
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        original_type = type(box)
        single = isinstance(box, (list, tuple))
        is_numpy = isinstance(box, np.ndarray)
        if single:
            if len(box) not in (4, 5):
                raise StructureError(
                    "BoxMode.convert takes one box as a list/tuple of 4 or 5 numbers, or an "
                    f"[N, 4] / [N, 5] array or tensor; got a {original_type.__name__} of "
                    f"length {len(box)}"
                )
            arr = torch.tensor(box)[None, :]
        elif is_numpy:
            arr = torch.from_numpy(np.asarray(box)).clone()
        elif isinstance(box, torch.Tensor):
            arr = box.clone()
        else:
            raise TypeError(
                f"BoxMode.convert: expected a list, tuple, numpy array or tensor, got {original_type}"
            )
        relative = (BoxMode.XYXY_REL, BoxMode.XYWH_REL)
        if from_mode in relative or to_mode in relative:
            raise StructureError(_RELATIVE)

        if from_mode == BoxMode.XYWHA_ABS and to_mode == BoxMode.XYXY_ABS:
            if arr.shape[-1] != 5:
                raise StructureError(
                    f"XYWHA boxes have 5 numbers (the last dimension), got shape {tuple(arr.shape)}"
                )
            dtype = arr.dtype
            work = arr.double()
            w, h, angle = work[:, 2], work[:, 3], work[:, 4]
            cos = torch.abs(torch.cos(angle * math.pi / 180.0))
            sin = torch.abs(torch.sin(angle * math.pi / 180.0))
            # The axis-aligned box enclosing the rotated one.
            enclosing_w = cos * w + sin * h
            enclosing_h = cos * h + sin * w
            x0 = work[:, 0] - enclosing_w / 2.0
            y0 = work[:, 1] - enclosing_h / 2.0
            arr = torch.stack([x0, y0, x0 + enclosing_w, y0 + enclosing_h], dim=1).to(dtype)
        elif from_mode == BoxMode.XYWH_ABS and to_mode == BoxMode.XYWHA_ABS:
            centers = arr[:, :2] + arr[:, 2:4] / 2.0
            arr = torch.cat(
                [centers.to(arr.dtype), arr[:, 2:4], torch.zeros_like(arr[:, :1])], dim=1
            )
        elif (from_mode, to_mode) in (
            (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS),
            (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS),
        ):
            fmt = {BoxMode.XYXY_ABS: "xyxy", BoxMode.XYWH_ABS: "xywh"}
            # torchvision's box_convert: x1 = x0 + w and w = x1 - x0 in the input's dtype.
            arr = box_convert(arr, fmt[from_mode], fmt[to_mode])
        else:
            raise NotImplementedError(
                f"Conversion from BoxMode {from_mode} to {to_mode} is not supported yet"
            )

        if single:
            return original_type(arr.flatten().tolist())
        if is_numpy:
            return arr.numpy()
        return arr


class Boxes:
    """A list of N boxes stored as a float32 tensor ``[N, 4]`` of ``(x0, y0, x1, y1)`` in pixels.

    Supports the cvpods operations: ``len``, iteration (one ``[4]`` tensor per box), indexing
    with an int (a ``Boxes`` of one box), a slice, a bool mask or an index tensor, ``cat``,
    ``area``, ``clip``, ``nonempty``, ``inside_box``, ``get_centers``, ``scale``, ``to``, ``clone``.
    """

    def __init__(self, tensor: torch.Tensor | Sequence) -> None:
        device = tensor.device if isinstance(tensor, torch.Tensor) else torch.device("cpu")
        tensor = torch.as_tensor(tensor, dtype=torch.float32, device=device)
        if tensor.numel() == 0:
            tensor = tensor.reshape(0, 4)
        if tensor.dim() != 2 or tensor.size(-1) != 4:
            raise StructureError(f"Boxes expects a [N, 4] tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    def clone(self) -> Boxes:
        return Boxes(self.tensor.clone())

    def to(self, *args: Any, **kwargs: Any) -> Boxes:
        return Boxes(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        """``[N]`` box areas in square pixels, ``(x1 - x0) * (y1 - y0)``."""
        t = self.tensor
        return (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])

    def clip(self, box_size: tuple[int, int]) -> None:
        """Clip in place to an image of ``(height, width)``: x to [0, width], y to [0, height].

        Raises StructureError (an AssertionError) if a coordinate is infinite or NaN.
        """
        if not torch.isfinite(self.tensor).all():
            raise StructureError("Box tensor contains infinite or NaN!")
        h, w = box_size
        self.tensor[:, 0::2] = self.tensor[:, 0::2].clamp(min=0, max=w)
        self.tensor[:, 1::2] = self.tensor[:, 1::2].clamp(min=0, max=h)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """``[N]`` bool: boxes whose width and height both exceed ``threshold``."""
        widths = self.tensor[:, 2] - self.tensor[:, 0]
        heights = self.tensor[:, 3] - self.tensor[:, 1]
        return (widths > threshold) & (heights > threshold)

    def get_centers(self) -> torch.Tensor:
        """``[N, 2]`` box centres ``(x, y)``."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale in place: x coordinates by ``scale_x``, y coordinates by ``scale_y``."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    def inside_box(self, box_size: tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """``[N]`` bool: ``x0, y0 >= -t`` and ``x1 < width + t``, ``y1 < height + t``."""
        h, w = box_size
        t = boundary_threshold
        return (
            (self.tensor[:, 0] >= -t)
            & (self.tensor[:, 1] >= -t)
            & (self.tensor[:, 2] < w + t)
            & (self.tensor[:, 3] < h + t)
        )

    def __getitem__(self, item: int | slice | torch.Tensor) -> Boxes:
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        selected = self.tensor[item]
        if selected.dim() != 2:
            raise _StructureIndexError(f"Indexing on Boxes with {item} failed to return a matrix!")
        return Boxes(selected)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @classmethod
    def cat(cls, boxes_list: Sequence[Boxes]) -> Boxes:
        """The boxes of every element of ``boxes_list`` (a list or tuple of Boxes), in order."""
        if not isinstance(boxes_list, (list, tuple)):
            raise StructureError("Boxes.cat takes a list or tuple of Boxes")
        if not boxes_list:
            return cls(torch.empty(0, 4))
        if not all(isinstance(b, Boxes) for b in boxes_list):
            raise StructureError("Boxes.cat takes a list of Boxes")
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_intersection(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """``[N, M]`` intersection areas of every box of ``boxes1`` with every box of ``boxes2``."""
    a, b = boxes1.tensor, boxes2.tensor
    wh = torch.min(a[:, None, 2:], b[None, :, 2:]) - torch.max(a[:, None, :2], b[None, :, :2])
    wh = wh.clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """``[N, M]`` intersection over union; 0 where the boxes do not intersect (no NaN for empty
    boxes)."""
    inter = pairwise_intersection(boxes1, boxes2)
    union = boxes1.area()[:, None] + boxes2.area()[None, :] - inter
    return torch.where(
        inter > 0, inter / union, torch.zeros(1, dtype=inter.dtype, device=inter.device)
    )


def pairwise_ioa(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """``[N, M]`` intersection over the area of the ``boxes2`` box; 0 where they do not intersect."""
    inter = pairwise_intersection(boxes1, boxes2)
    area2 = boxes2.area()[None, :]
    return torch.where(
        inter > 0, inter / area2, torch.zeros(1, dtype=inter.dtype, device=inter.device)
    )


def matched_boxlist_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """``[N]`` IoU of ``boxes1[i]`` with ``boxes2[i]`` (both N long)."""
    if len(boxes1) != len(boxes2):
        raise StructureError(
            f"boxlists should have the same number of entries, got {len(boxes1)}, {len(boxes2)}"
        )
    a, b = boxes1.tensor, boxes2.tensor
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (boxes1.area() + boxes2.area() - inter)
