"""File helpers: the one atomic writer of cvpods (:func:`atomic_write`) and ``PathManager``.

Every file cvpods writes (checkpoints, results and metrics JSON, config dumps, dataset images and
annotations, demo pictures) goes through :func:`atomic_write`: the content goes to a temporary
file in the destination folder, is flushed to disk and renamed over the destination
(``os.replace`` is atomic on POSIX and Windows), so a crash never leaves a truncated file under
the real name. A full disk raises :class:`DiskFullError` ("no space left on device: <path>");
temporary files of interrupted writes (``.<name>.<12 hex digits>.tmp``) are removed by
:func:`remove_temporary_files`.

``PathManager`` gives the iopath/fvcore names cvpods and detectron2 code call (``open``,
``exists``, ``ls``...) for local paths (``file://`` accepted); ``http(s)://`` and
``detectron2://`` URLs are read through the weights cache
(:func:`cvpods.checkpoint.url_cache.resolve_weights_path`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = [
    "DiskFullError",
    "PathManager",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "remove_temporary_files",
]

# The temporary files of atomic_write: ".<destination name>.<12 hex digits>.tmp".
_TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


class DiskFullError(OSError):
    """A write failed because the device is full; ``str()`` is "no space left on device: <path>".

    The destination was left as it was (writes go through a temporary file).
    """

    def __init__(self, path: str) -> None:
        super().__init__(errno.ENOSPC, "no space left on device", path)
        self.path = path

    def __str__(self) -> str:
        return f"no space left on device: {self.path} (the file was left unchanged)"


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is ENOSPC / EDQUOT."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # torch's C++ writer reports the failure as a RuntimeError holding the system message.
        if "No space left on device" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _open_temporary(fd: int, mode: str) -> IO:
    """The file object written by :func:`_atomic_file` (a seam for tests that simulate errors)."""
    return os.fdopen(fd, mode)


@contextlib.contextmanager
def _atomic_file(path: str, mode: str, verify: Callable[[str], None] | None = None) -> Iterator[IO]:
    """A temporary file next to ``path`` that replaces ``path`` if the block finishes normally.

    Raises:
        DiskFullError: the device is full (the temporary file is removed, ``path`` unchanged).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp_path = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # Unlike tempfile.mkstemp (always 0600), os.open honours the umask like a normal file write.
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        if _is_disk_full(e):
            raise DiskFullError(path) from e
        raise
    try:
        with _open_temporary(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        if isinstance(e, Exception) and not isinstance(e, DiskFullError) and _is_disk_full(e):
            raise DiskFullError(path) from e
        raise


def remove_temporary_files(folder: str) -> list[str]:
    """Delete the temporary files that interrupted atomic writes left in ``folder``.

    Only names of the form ``.<name>.<12 hex digits>.tmp`` (what the writers of this module
    create) are touched. Call it only when no other process writes into ``folder`` (the
    launchers hold the OUTPUT_DIR lock). Returns the removed paths.
    """
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in sorted(names):
        path = os.path.join(folder, name)
        if _TEMPORARY_NAME.fullmatch(name) and os.path.isfile(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


def _local(path: str) -> str:
    path = os.fspath(path)
    if path.startswith("file://"):
        return path[len("file://") :]
    if "://" in path:
        raise ValueError(f"PathManager: {path!r} is a URL; only get_local_path/open can read URLs")
    return os.path.expanduser(path)


class PathManager:
    """Static file helpers with iopath's names and meaning."""

    @staticmethod
    def get_local_path(path: str, **kwargs: Any) -> str:
        """A local file for ``path``: the path itself, or the cached download of a URL."""
        path = os.fspath(path)
        if "://" in path and not path.startswith("file://"):
            from cvpods.checkpoint.url_cache import resolve_weights_path

            return resolve_weights_path(path)
        return _local(path)

    @staticmethod
    def open(path: str, mode: str = "r", buffering: int = -1, **kwargs: Any) -> IO:
        """``open()`` of the local file (a URL is read from its cached download)."""
        if "://" in os.fspath(path) and not os.fspath(path).startswith("file://"):
            if any(c in mode for c in "wax+"):
                raise ValueError(f"PathManager.open: cannot write to URL {path!r}")
            path = PathManager.get_local_path(path)
        return open(_local(path), mode, buffering, **kwargs)  # noqa: SIM115 - returned to caller

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.exists(_local(path))

    @staticmethod
    def isfile(path: str) -> bool:
        return os.path.isfile(_local(path))

    @staticmethod
    def isdir(path: str) -> bool:
        return os.path.isdir(_local(path))

    @staticmethod
    def ls(path: str) -> list[str]:
        """The names in the folder ``path`` (not full paths), sorted."""
        return sorted(os.listdir(_local(path)))

    @staticmethod
    def mkdirs(path: str) -> None:
        """Make the folder and its parents; no error if it exists."""
        os.makedirs(_local(path), exist_ok=True)

    @staticmethod
    def rm(path: str) -> None:
        """Remove the file ``path``."""
        os.remove(_local(path))

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        """Copy a file; refuses (returns False) to replace ``dst_path`` unless ``overwrite``."""
        src, dst = _local(src_path), _local(dst_path)
        if os.path.exists(dst) and not overwrite:
            return False
        shutil.copyfile(src, dst)
        return True

    @staticmethod
    def mv(src_path: str, dst_path: str) -> bool:
        """Move/rename a file."""
        os.replace(_local(src_path), _local(dst_path))
        return True


def atomic_write(
    path: str | os.PathLike,
    data: Any,
    save_fn: Callable[[Any, IO[bytes]], None] | None = None,
    verify: Callable[[str], None] | None = None,
) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then a rename).

    Args:
        path: the destination; its folder is created if needed.
        data: ``bytes`` are written as they are, a ``str`` as UTF-8 text (JSON: pass the
            ``json.dumps`` text); any other object goes through ``save_fn``.
        save_fn: ``save_fn(data, binary_file)``; default :func:`torch.save` for objects other
            than bytes and str.
        verify: ``verify(temporary_path)`` runs on the complete temporary file before the
            rename; if it raises, the temporary file is removed and ``path`` is left as it was.

    Raises:
        DiskFullError: the device is full (``path`` unchanged, no temporary file left).
    """
    path = os.fspath(path)
    if save_fn is None and isinstance(data, str):
        with _atomic_file(path, "w", verify) as f:
            f.write(data)
        return
    if save_fn is None and isinstance(data, (bytes, bytearray, memoryview)):
        save_fn = _write_bytes
    elif save_fn is None:
        import torch

        save_fn = torch.save
    with _atomic_file(path, "wb", verify) as f:
        save_fn(data, f)


def _write_bytes(data: bytes, f: IO[bytes]) -> None:
    f.write(data)


def atomic_save(
    obj: Any,
    path: str,
    save_fn: Callable[[Any, IO[bytes]], None] | None = None,
    verify: Callable[[str], None] | None = None,
) -> None:
    """:func:`atomic_write` of an object through a binary writer (default :func:`torch.save`),
    even when the object is bytes or str."""
    if save_fn is None:
        import torch

        save_fn = torch.save
    atomic_write(path, obj, save_fn=save_fn, verify=verify)


def atomic_write_text(text: str, path: str) -> None:
    """:func:`atomic_write` of UTF-8 text (the argument order of the older helper)."""
    atomic_write(path, text)
