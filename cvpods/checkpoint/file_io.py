"""Reading checkpoint files safely, and checking them before they are written.

Writes use the one atomic writer of :mod:`cvpods.utils.file_io` (re-exported here:
:func:`atomic_write`, :func:`atomic_save`, :func:`atomic_write_text`, :class:`DiskFullError`,
:func:`remove_temporary_files`), so a crash or a failing ``torch.save`` never leaves a truncated
checkpoint under the real name. Reads never unpickle arbitrary objects: torch files use
``torch.load(weights_only=True)`` and ``.pkl`` files the restricted unpickler of
:mod:`cvpods.checkpoint.safe_pickle`. A file that is no checkpoint at all (a text file, an HTML
error page, a Git LFS pointer, an image) raises :class:`NotACheckpointError` saying what it
looks like."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from ..utils.file_io import (
    DiskFullError,
    atomic_save,
    atomic_write,
    atomic_write_text,
    remove_temporary_files,
)
from .safe_pickle import UnsafeCheckpointError, load_pickle_safely

__all__ = [
    "PICKLE_EXTENSIONS",
    "DiskFullError",
    "NotACheckpointError",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "check_checkpoint_file",
    "check_weights_only_loadable",
    "describe_file_content",
    "load_checkpoint_file",
    "remove_temporary_files",
]

PICKLE_EXTENSIONS = (".pkl", ".pickle")
# torch.save files are zip archives; one named .pkl still goes through the weights-only torch load.
_ZIP_MAGIC = b"PK\x03\x04"
# Pickle protocols 2..5 start with the PROTO opcode; legacy (pre-1.6) torch.save files too.
_PICKLE_PROTO = b"\x80"


class NotACheckpointError(pickle.UnpicklingError, RuntimeError):
    """The file is not a checkpoint (or a weights pickle) at all: the message says what it is."""


def _locate(obj: Any, type_names: set[str], where: str) -> str | None:
    """The path (``where['key'][0]``) of the first entry whose type is in ``type_names``."""
    if f"{type(obj).__module__}.{type(obj).__qualname__}" in type_names:
        return where
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _locate(value, type_names, f"{where}[{key!r}]")
        if found:
            return found
    return None


def check_weights_only_loadable(saved_path: str, obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` if ``saved_path`` (holding ``obj``) would not load with weights_only.

    Uses torch's own list of the globals a ``weights_only`` load refuses, so the check is exactly
    the one a later :func:`load_checkpoint_file` makes; ``obj`` is only used to name the offending
    entry. Called on the temporary file before it is renamed, so such a checkpoint never appears.
    """
    list_unsafe = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if list_unsafe is None:  # torch < 2.5: try the load itself (mmap: tensors are not read)
        try:
            torch.load(saved_path, map_location="cpu", weights_only=True, mmap=True)
            return
        except pickle.UnpicklingError as e:
            raise TypeError(f"{where} would not load with weights_only=True: {e}") from e
    unsafe = list_unsafe(saved_path)
    if not unsafe:
        return
    entry = _locate(obj, set(unsafe), where) or where
    hint = (
        " (convert numpy arrays with torch.from_numpy)" if any("numpy" in g for g in unsafe) else ""
    )
    raise TypeError(
        f"{entry} holds objects that torch.load(weights_only=True) refuses ({', '.join(unsafe)})"
        f"{hint}; checkpoints may only hold tensors, plain containers, numbers and strings"
    )


# (magic bytes, what a file starting with them is)
_KNOWN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive (extract it first)"),
    (b"BZh", "a bzip2 archive (extract it first)"),
    (b"\xfd7zXZ", "an xz archive (extract it first)"),
    (b"7z\xbc\xaf", "a 7-zip archive (extract it first)"),
    (b"\x93NUMPY", "a numpy .npy array file"),
    (b"\x89HDF", "an HDF5 file (Keras / h5py weights)"),
    (b"\x08", "possibly a protobuf (ONNX / Caffe / TensorFlow) file"),
)


def describe_file_content(head: bytes) -> str:
    """What a file starting with the bytes ``head`` looks like ("an HTML page", "a text file
    starting with '...'", "a JPEG image", ...), for error messages."""
    if not head:
        return "an empty file (0 bytes)"
    for magic, what in _KNOWN_MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data starting with {head[:16]!r}"
    stripped = text.lstrip().lower()
    if stripped.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the file itself (run `git lfs pull`)"
    if stripped.startswith(("<!doctype html", "<html", "<?xml", "<head")):
        return "an HTML/XML page (a failed download or a login page?)"
    if stripped.startswith(("{", "[")):
        return "a JSON (text) file"
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"a text file starting with {first_line[:60]!r}"


def _read_head(path: str, size: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _not_a_checkpoint(path: str, head: bytes, detail: str = "") -> NotACheckpointError:
    what = describe_file_content(head)
    suffix = f" ({detail})" if detail else ""
    return NotACheckpointError(
        f"{path} is not a checkpoint: it is neither a torch.save file (zip archive or legacy "
        f"pickle) nor a weights pickle; it looks like {what}{suffix}"
    )


def check_checkpoint_file(path: str) -> None:
    """Fail fast on a local file that cannot be a checkpoint, reading only its first bytes.

    Raises:
        FileNotFoundError: no such file.
        NotACheckpointError: not a torch.save zip archive or pickle (for ``.pkl`` files, which
            may be old text-protocol pickles, only an empty file is refused here).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    head = _read_head(path)
    if path.lower().endswith(PICKLE_EXTENSIONS):
        if not head:
            raise _not_a_checkpoint(path, head)
        return
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        raise _not_a_checkpoint(path, head)


def load_checkpoint_file(path: str) -> Any:
    """The object in ``path``: restricted unpickling for ``.pkl``, else a weights-only torch load.

    A ``.pkl`` that is really a ``torch.save`` zip archive is read with the torch load.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds (or would execute) something other than plain data.
        NotACheckpointError: the file is no checkpoint at all (the message says what it looks
            like: a text file, an HTML page, an image, ...).
        RuntimeError: the file is not a readable checkpoint (corrupt or truncated).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    head = _read_head(path)
    is_zip = head.startswith(_ZIP_MAGIC)
    if path.lower().endswith(PICKLE_EXTENSIONS) and not is_zip:
        try:
            return load_pickle_safely(path)
        except UnsafeCheckpointError:
            raise
        except pickle.UnpicklingError as e:
            if head.startswith(_PICKLE_PROTO):
                raise
            raise _not_a_checkpoint(path, head) from e
    if not is_zip and not head.startswith(_PICKLE_PROTO):
        raise _not_a_checkpoint(path, head)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e):  # not pickle opcodes at all: garbage, not a threat
            raise NotACheckpointError(
                f"{path}: not a readable torch checkpoint (corrupt, or not a checkpoint at all: "
                f"{_first_line(e)})"
            ) from e
        raise UnsafeCheckpointError(
            f"{path}: refused to load. torch.load(weights_only=True) found objects other than "
            "tensors and plain containers in this file; loading them could execute code, so "
            f"nothing from it was run. Details: {_refusal_reason(e)}"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as e:
        raise NotACheckpointError(
            f"{path}: not a readable torch checkpoint (corrupt or truncated?): {_first_line(e)}"
        ) from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _refusal_reason(error: BaseException) -> str:
    """The line of torch's weights-only error that names the refused global (else its first)."""
    for line in str(error).splitlines():
        if "Unsupported" in line or "global" in line.lower():
            return line.strip().removeprefix("WeightsUnpickler error: ")
    return _first_line(error)
