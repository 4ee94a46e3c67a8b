"""Per-image instance annotations or predictions: named fields of equal length."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from .boxes import StructureError


class Instances:
    """An image size ``(height, width)`` plus fields that all have the same length N.

    Fields are set as attributes (``inst.gt_boxes = Boxes(...)``) and may be tensors, Boxes, lists,
    or anything with ``__len__``/``__getitem__`` (and ``cat`` for :meth:`cat`).
    """

    def __init__(self, image_size: tuple[int, int], **fields: Any) -> None:
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: dict[str, Any] = {}
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the image these instances belong to."""
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        if name == "_fields" or name not in self._fields:
            raise AttributeError(f"Instances has no field {name!r}")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        if self._fields and len(value) != len(self):
            raise StructureError(
                f"field {name!r} has length {len(value)}, but the Instances have length {len(self)}"
            )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> Instances:
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            if hasattr(value, "to"):
                value = value.to(*args, **kwargs)
            out.set(name, value)
        return out

    def __getitem__(self, item: int | slice | torch.Tensor) -> Instances:
        if isinstance(item, int):
            if item >= len(self) or item < -len(self):
                raise IndexError("Instances index out of range")
            item = item % len(self)
            item = slice(item, item + 1)
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            out.set(name, value[item])
        return out

    def __len__(self) -> int:
        for value in self._fields.values():
            return len(value)
        return 0

    def __iter__(self):
        raise NotImplementedError("Instances cannot be iterated; index it or read its fields")

    @staticmethod
    def cat(instance_lists: list[Instances]) -> Instances:
        """Concatenate Instances of the same image size and fields."""
        if not isinstance(instance_lists, (list, tuple)) or not all(
            isinstance(i, Instances) for i in instance_lists
        ):
            raise StructureError("Instances.cat takes a list of Instances")
        if not instance_lists:
            raise StructureError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]
        image_size = instance_lists[0].image_size
        if any(i.image_size != image_size for i in instance_lists[1:]):
            raise StructureError("Instances.cat: all Instances must have the same image_size")
        out = Instances(image_size)
        for name, first in instance_lists[0]._fields.items():
            values = [i.get(name) for i in instance_lists]
            if isinstance(first, torch.Tensor):
                merged = torch.cat(values, dim=0)
            elif isinstance(first, list):
                merged = list(itertools.chain(*values))
            elif hasattr(type(first), "cat"):
                merged = type(first).cat(values)
            else:
                raise ValueError(
                    f"Instances.cat: field {name!r} of type {type(first)} cannot be concatenated"
                )
            out.set(name, merged)
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {v}" for k, v in self._fields.items())
        return (
            f"Instances(num_instances={len(self)}, image_height={self._image_size[0]}, "
            f"image_width={self._image_size[1]}, fields=[{fields}])"
        )
