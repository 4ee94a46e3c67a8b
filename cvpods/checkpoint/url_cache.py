"""Weight URLs -> files in a local cache.

``detectron2://X`` stands for ``https://dl.fbaipublicfiles.com/detectron2/X`` (the prefix the
official configs use, e.g. ``detectron2://ImageNetPretrained/MSRA/R-50.pkl``). A URL is cached at
``$CVPODS_CACHE/<path of the URL>`` (default cache: ``~/.cache/cvpods``), so
``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` lives at
``~/.cache/cvpods/detectron2/ImageNetPretrained/MSRA/R-50.pkl`` (the layout of fvcore/iopath
caches).

A missing file is downloaded (to a temporary file, then renamed) unless ``CVPODS_OFFLINE=1``; if
that is impossible, the error names the URL to fetch and the exact path to put the file at.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

from .file_io import atomic_save

__all__ = ["DETECTRON2_PREFIX", "cache_dir", "cached_path_of", "is_url", "resolve_weights_path"]

DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
_SCHEMES = ("http://", "https://", "detectron2://")


def cache_dir() -> str:
    """``$CVPODS_CACHE`` or ``~/.cache/cvpods``."""
    return os.path.expanduser(
        os.environ.get("CVPODS_CACHE") or os.path.join("~", ".cache", "cvpods")
    )


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _download_url(url: str) -> str:
    if url.startswith("detectron2://"):
        return DETECTRON2_PREFIX + url[len("detectron2://") :]
    return url


def cached_path_of(url: str) -> str:
    """Where ``url`` is (or would be) cached: the cache folder + the URL's path."""
    if not url.startswith(_SCHEMES):
        raise ValueError(
            f"unsupported weights URL {url!r}: expected a local path or a URL starting with "
            f"{', '.join(_SCHEMES)}"
        )
    path = urllib.parse.urlparse(_download_url(url)).path.lstrip("/")
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"weights URL {url!r} does not name a file")
    return os.path.join(cache_dir(), *parts)


def _download(url: str, destination: str, timeout: float) -> None:
    def copy(response, f) -> None:
        shutil.copyfileobj(response, f)

    with urllib.request.urlopen(url, timeout=timeout) as response:
        atomic_save(response, destination, save_fn=copy)


def resolve_weights_path(path: str, timeout: float | None = None) -> str:
    """A local file for ``path``: itself (``file://`` stripped) or the cached copy of a URL.

    Args:
        path: a file name or an http(s):// / detectron2:// URL.
        timeout: seconds to wait for a download (default ``$CVPODS_DOWNLOAD_TIMEOUT`` or 30).

    Raises:
        FileNotFoundError: the URL is not cached and could not be downloaded; the message says which
            URL to fetch and where to put the file.
    """
    if path.startswith("file://"):
        return path[len("file://") :]
    if not is_url(path):
        return path
    local = cached_path_of(path)
    if os.path.isfile(local):
        return local
    url = _download_url(path)
    if timeout is None:
        timeout = float(os.environ.get("CVPODS_DOWNLOAD_TIMEOUT", "30"))
    if os.environ.get("CVPODS_OFFLINE", "0") not in ("", "0"):
        reason = "CVPODS_OFFLINE is set"
    else:
        try:
            _download(url, local, timeout)
            return local
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = f"download failed: {e}"
    raise FileNotFoundError(
        f"weights {path!r} are not in the cache and could not be downloaded ({reason}). "
        f"Fetch {url} on a machine with network access and put the file at {local} "
        "(or set $CVPODS_CACHE to the folder that holds your cache)."
    )
