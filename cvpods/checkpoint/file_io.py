"""Reading and writing checkpoint files: atomic writes, weights-only reads.

Writes go to a temporary file in the destination folder and are renamed over the destination
(``os.replace`` is atomic on POSIX and Windows), so a crash or a failing ``torch.save`` never leaves
a truncated checkpoint under the real name. Reads never unpickle arbitrary objects: torch files use
``torch.load(weights_only=True)`` and ``.pkl`` files the restricted unpickler of
:mod:`cvpods.checkpoint.safe_pickle`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

import torch

from .safe_pickle import UnsafeCheckpointError, load_pickle_safely

__all__ = [
    "PICKLE_EXTENSIONS",
    "atomic_save",
    "atomic_write_text",
    "check_weights_only_loadable",
    "load_checkpoint_file",
]

PICKLE_EXTENSIONS = (".pkl", ".pickle")
# torch.save files are zip archives; one named .pkl still goes through the weights-only torch load.
_ZIP_MAGIC = b"PK\x03\x04"


@contextlib.contextmanager
def _atomic_file(path: str, mode: str, verify: Callable[[str], None] | None = None) -> Iterator[IO]:
    """A temporary file next to ``path`` that replaces ``path`` if the block finishes normally."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp_path = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # Unlike tempfile.mkstemp (always 0600), os.open honours the umask like a normal file write.
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


def atomic_save(
    obj: Any,
    path: str,
    save_fn: Callable[[Any, IO[bytes]], None] = torch.save,
    verify: Callable[[str], None] | None = None,
) -> None:
    """``save_fn(obj, file)`` into a temporary file, then rename it to ``path``.

    ``verify(temporary_path)``, if given, runs on the complete temporary file before the rename;
    if it raises, the temporary file is removed and ``path`` is left as it was.
    """
    with _atomic_file(path, "wb", verify) as f:
        save_fn(obj, f)


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with _atomic_file(path, "w") as f:
        f.write(text)


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


def load_checkpoint_file(path: str) -> Any:
    """The object in ``path``: restricted unpickling for ``.pkl``, else a weights-only torch load.

    A ``.pkl`` that is really a ``torch.save`` zip archive is read with the torch load.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds (or would execute) something other than plain data.
        RuntimeError: the file is not a readable checkpoint (corrupt or truncated).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    if path.lower().endswith(PICKLE_EXTENSIONS) and not is_zip:
        return load_pickle_safely(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused to load. torch.load(weights_only=True) found objects other than "
            "tensors and plain containers in this file; loading them could execute code, so "
            f"nothing from it was run. Details: {_refusal_reason(e)}"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise RuntimeError(
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
