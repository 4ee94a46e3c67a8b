"""A batch of differently sized images padded into one tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .boxes import StructureError


class ImageList:
    """Padded images ``tensor [N, C, H, W]`` and each image's true ``(h, w)`` in ``image_sizes``."""

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]]) -> None:
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """Image ``idx`` without its padding: ``[C, h, w]``."""
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, *args, **kwargs) -> ImageList:
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: Sequence[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> ImageList:
        """Pad ``[..., h, w]`` tensors (bottom/right, with ``pad_value``) into one batch.

        The padded height and width are the largest of the images, rounded up to a multiple of
        ``size_divisibility`` when it is > 1. ``image_sizes`` holds each image's ``(h, w)``.

        Tracing-friendly: under ``torch.jit.trace`` the padded size is computed from the traced
        shapes (tensors), so a traced model pads inputs of other sizes correctly.
        """
        if not isinstance(tensors, (list, tuple)) or len(tensors) == 0:
            raise StructureError("ImageList.from_tensors needs a non-empty list of image tensors")
        shape = tensors[0].shape[:-2]
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                raise StructureError(f"ImageList.from_tensors: expected tensors, got {type(t)}")
            if t.shape[:-2] != shape:
                raise StructureError(
                    f"all images must share leading dims {tuple(shape)}; got {tuple(t.shape)}"
                )
        if torch.jit.is_tracing():
            # Shapes are traced tensors here: keep them symbolic.
            image_sizes = [(t.shape[-2], t.shape[-1]) for t in tensors]
            sizes = torch.stack(
                [torch.stack([torch.as_tensor(h), torch.as_tensor(w)]) for h, w in image_sizes]
            )
            max_size = sizes.max(0).values
            if size_divisibility > 1:
                stride = size_divisibility
                max_size = (
                    torch.div(max_size + (stride - 1), stride, rounding_mode="floor") * stride
                )
            max_h, max_w = max_size[0], max_size[1]
        else:
            image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
            max_h = max(h for h, _ in image_sizes)
            max_w = max(w for _, w in image_sizes)
            if size_divisibility > 1:
                max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
                max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
        if len(tensors) == 1:
            h, w = image_sizes[0]
            batched = F.pad(tensors[0], [0, max_w - w, 0, max_h - h], value=pad_value).unsqueeze(0)
        else:
            batched = tensors[0].new_full((len(tensors), *shape, max_h, max_w), pad_value)
            for image, padded in zip(tensors, batched):
                padded[..., : image.shape[-2], : image.shape[-1]].copy_(image)
        return ImageList(batched.contiguous(), image_sizes)
