"""Loading pickled weight files without running code from them.

Python pickles can call any importable function while they load (``os.system`` included), so a
downloaded ``.pkl`` must never go through :func:`pickle.load`. :func:`load_pickle_safely` uses an
unpickler whose class lookup only answers for plain containers, numbers, strings, bytes and numpy
arrays; any other global in the stream is refused *before* it can be called.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, BinaryIO

__all__ = ["UnsafeCheckpointError", "load_pickle_safely", "ALLOWED_PICKLE_GLOBALS"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A weight file asked for something other than plain data; nothing from it was executed."""


# (module, name) pairs a weights pickle may refer to. numpy moved ``numpy.core`` to ``numpy._core``
# in 2.0; pickles written by either name the module they were written with.
ALLOWED_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("builtins", name)
        for name in (
            "dict",
            "list",
            "tuple",
            "set",
            "frozenset",
            "int",
            "float",
            "complex",
            "bool",
            "str",
            "bytes",
            "bytearray",
        )
    ]
    + [("__builtin__", name) for name in ("dict", "list", "tuple", "set", "frozenset", "int")]
    + [("__builtin__", name) for name in ("float", "complex", "bool", "str", "unicode")]
    + [("collections", "OrderedDict")]
    # Protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(latin-1 text, "latin1").
    + [("_codecs", "encode")]
    + [
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ]
    # Protocol 5 rebuilds contiguous arrays with _frombuffer(bytes, dtype, shape, order); numpy
    # refuses object dtypes there, so it can only produce plain numeric arrays.
    + [(module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
)

# numpy >= 1.25 pickles dtypes as classes such as numpy.dtypes.Float32DType.
_NUMPY_DTYPE_CLASS_MODULE = "numpy.dtypes"


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_PICKLE_GLOBALS` (plus numpy dtype classes)."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        # latin1 reads the numpy buffers of Python 2 pickles (Detectron/Caffe2 .pkl files) intact.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        if module == _NUMPY_DTYPE_CLASS_MODULE and name.endswith("DType"):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self._source}: refusing to load global '{module}.{name}'. A weights pickle may only "
            "hold dicts, lists, tuples, sets, OrderedDicts, numbers, strings, bytes and numpy "
            "arrays; this file asks for something else, which could run code. Nothing from it was "
            "executed. Convert trusted weights to a plain state dict (torch.save) instead."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            f"{self._source}: the pickle refers to persistent id {pid!r} (torch storages or other "
            "external objects); a .pkl weight file must hold plain data and numpy arrays. If this "
            "is a torch.save file, give it a .pth extension."
        )


def load_pickle_safely(path: str | os.PathLike | BinaryIO) -> Any:
    """The object pickled in ``path`` (a file name or a binary file object).

    Raises:
        UnsafeCheckpointError: the pickle refers to a global outside :data:`ALLOWED_PICKLE_GLOBALS`;
            raised at the lookup, so no referenced function is ever called.
        pickle.UnpicklingError: the file is not a readable pickle (the message names the file).
    """
    if isinstance(path, (str, os.PathLike)):
        source = os.fspath(path)
        with open(source, "rb") as f:
            return _load(f, source)
    return _load(path, getattr(path, "name", "<file object>"))


def _load(f: BinaryIO | io.BytesIO, source: str) -> Any:
    try:
        return _RestrictedUnpickler(f, source).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise pickle.UnpicklingError(
            f"{source}: not a readable weights pickle ({type(e).__name__}: {e})"
        ) from e
