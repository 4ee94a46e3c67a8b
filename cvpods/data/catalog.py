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
is actually used. Registering is idempotent: an experiment's ``config.py`` / ``net.py`` may be
imported more than once in a process (the launchers do), so registering a name again with an
equivalent loader (the same function with equal bound arguments) is a no-op, while a different
loader under a taken name is an error.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterator
from typing import Any


def _unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listed = ", ".join(sorted(known)) if known else "(none)"
    return f"{kind} {name!r} is not registered.{hint} Registered names: {listed}"


def _loader_identity(func: Callable) -> tuple | None:
    """What a loader computes, as a comparable value, or None when that cannot be told.

    A ``functools.partial`` is its function and bound arguments; a plain function (a lambda or
    closure re-created by importing the same file again) is its code, defaults and the values of
    the variables it closes over.
    """
    if isinstance(func, functools.partial):
        inner = _loader_identity(func.func)
        if inner is None:
            return None
        return ("partial", inner, func.args, tuple(sorted(func.keywords.items())))
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    cells = tuple(cell.cell_contents for cell in (func.__closure__ or ()))
    return ("function", code, func.__defaults__, cells)


def _same_loader(a: Callable, b: Callable) -> bool:
    if a is b:
        return True
    ia, ib = _loader_identity(a), _loader_identity(b)
    try:
        return ia is not None and bool(ia == ib)
    except Exception:  # values whose comparison is not a plain bool (e.g. arrays)
        return False


def _describe_loader(func: Callable) -> str:
    if isinstance(func, functools.partial):
        arguments = [repr(a) for a in func.args] + [f"{k}={v!r}" for k, v in func.keywords.items()]
        return f"{_describe_loader(func.func)}({', '.join(arguments)})"
    name = getattr(func, "__qualname__", repr(func))
    code = getattr(func, "__code__", None)
    where = f" defined in {code.co_filename}:{code.co_firstlineno}" if code is not None else ""
    cells = [repr(cell.cell_contents) for cell in (getattr(func, "__closure__", None) or ())]
    bound = f" with {', '.join(cells)}" if cells else ""
    return f"{name}{where}{bound}"


class _DatasetCatalog:
    """Maps a dataset name to a function returning its list of dataset dicts."""

    def __init__(self) -> None:
        self._loaders: dict[str, Callable[[], list[dict]]] = {}

    def register(self, name: str, func: Callable[[], list[dict]], overwrite: bool = False) -> None:
        """Register ``func`` (no arguments, returns a list of dataset dicts) under ``name``.

        Registering ``name`` again with an equivalent loader (see the module docstring) keeps the
        registration; a different loader raises ``KeyError`` unless ``overwrite`` is true.
        """
        if not callable(func):
            raise TypeError(f"dataset {name!r}: expected a callable returning dataset dicts")
        known = self._loaders.get(name)
        if known is not None and not overwrite:
            if _same_loader(known, func):
                return
            raise KeyError(
                f"dataset {name!r} is already registered with a different loader: "
                f"{_describe_loader(known)}; now asked for {_describe_loader(func)}. "
                "Use another name, or pass overwrite=True to replace it."
            )
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
        """Set several attributes (each as ``setattr``: a changed value is refused); returns self."""
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """The attribute ``key``, or ``default`` when it is not set."""
        return self._values.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        """A copy of every attribute."""
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
