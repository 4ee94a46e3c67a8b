"""``PathManager``: the file helpers cvpods code calls (``PathManager.open``, ``exists``, ``ls``...).

cvpods/detectron2 route file access through an iopath/fvcore ``PathManager`` so that the same code
reads local files and URLs. This one covers local paths (``file://`` accepted) and resolves
``http(s)://`` and ``detectron2://`` URLs through the weights cache for reading
(:func:`cvpods.checkpoint.url_cache.resolve_weights_path`).
"""

from __future__ import annotations

import os
import shutil
from typing import IO, Any

__all__ = ["PathManager"]


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
