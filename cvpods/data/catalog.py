"""Registries of datasets (name -> list of dataset dicts) and of their metadata.

A *dataset dict* describes one image::

    {
        "file_name": str,            # path of the image file
        "height": int, "width": int, # image size in pixels, as stored on disk
        "image_id": int,             # the id used by the evaluator (the COCO image id)
        "annotations": [             # one dict per object
            {"bbox": [x0, y0, x1, y1],   # absolute XYXY pixel box (float)
             "category_id": int,         # contiguous class id in [0, K)
             "iscrowd": 0 or 1},
        ],
    }

Datasets are registered as zero-argument functions, so nothing is read from disk until a dataset
is actually used.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any


def _unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listed = ", ".join(sorted(known)) if known else "(none)"
    return f"{kind} {name!r} is not registered.{hint} Registered names: {listed}"


class _DatasetCatalog:
    """Maps a dataset name to a function returning its list of dataset dicts."""

    def __init__(self) -> None:
        self._loaders: dict[str, Callable[[], list[dict]]] = {}

    def register(self, name: str, func: Callable[[], list[dict]], overwrite: bool = False) -> None:
        """Register ``func`` (no arguments, returns a list of dataset dicts) under ``name``."""
        if not callable(func):
            raise TypeError(f"dataset {name!r}: expected a callable returning dataset dicts")
        if name in self._loaders and not overwrite:
            raise KeyError(f"dataset {name!r} is already registered (pass overwrite=True)")
        self._loaders[name] = func

    def get(self, name: str) -> list[dict]:
        """Call the loader registered as ``name`` and return its dataset dicts."""
        if name not in self._loaders:
            raise KeyError(_unknown_name_message("dataset", name, list(self._loaders)))
        dicts = self._loaders[name]()
        if not isinstance(dicts, list):
            raise TypeError(f"dataset {name!r}: the loader returned {type(dicts)}, expected a list")
        return dicts

    def remove(self, name: str) -> None:
        self._loaders.pop(name, None)

    def list(self) -> list[str]:
        return list(self._loaders)

    def __contains__(self, name: str) -> bool:
        return name in self._loaders


class Metadata:
    """Attributes describing one dataset (``thing_classes``, ``json_file``, ...).

    A value, once set, cannot be changed to a different value: two parts of a program disagreeing
    about, e.g., the class names of a dataset is a bug that should surface immediately.
    """

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_values", {})

    def __getattr__(self, key: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if key in values:
            return values[key]
        raise AttributeError(
            f"metadata of dataset {self.name!r} has no attribute {key!r}; "
            f"available: {sorted(values)}"
        )

    def __setattr__(self, key: str, value: Any) -> None:
        values = self._values
        if key in values and values[key] != value:
            raise ValueError(
                f"metadata {key!r} of dataset {self.name!r} is already {values[key]!r}; "
                f"refusing to change it to {value!r}"
            )
        values[key] = value

    def set(self, **kwargs: Any) -> Metadata:
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __repr__(self) -> str:
        return f"Metadata(name={self.name!r}, {self._values!r})"


class _MetadataCatalog:
    """Maps a dataset name to its :class:`Metadata` (created empty on first access)."""

    def __init__(self) -> None:
        self._metadata: dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        if name not in self._metadata:
            self._metadata[name] = Metadata(name)
        return self._metadata[name]

    def remove(self, name: str) -> None:
        self._metadata.pop(name, None)

    def list(self) -> list[str]:
        return list(self._metadata)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
