"""Finding bad data when a dataset is loaded, before training, not when an image is sampled.

:func:`check_image_files` checks that every image a dataset refers to exists and that its header
decodes to the size its annotations give (PIL reads only the header; EXIF rotation is taken into
account as OpenCV applies it when the loader reads the image). It runs in a thread pool and
remembers the sizes of good files in a cache keyed by path, file size and mtime, so a second load
only ``stat``s the files (datasets of at least :data:`MIN_FILES_TO_CACHE` images). The cache
lives in ``$CVPODS_CACHE/image_checks/`` (default ``~/.cache/cvpods``), never in the dataset
folder (which may be read-only or shared), and is written atomically (a temporary file and a
rename), so concurrent runs cannot corrupt it. In a multi-process run only rank 0 checks; the
others receive its verdict.

All bad files are reported at once in one :class:`BadDataError`. With the switch
``DATASETS.SKIP_BAD_DATA`` (``skip_bad=True``) they are left out instead and counted in the log;
the same switch applies to malformed annotations found by
:func:`cvpods.data.datasets.coco.load_coco_json` (see :func:`skipping_bad_data`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..utils import comm

__all__ = [
    "BadDataError",
    "ImageProblem",
    "MAX_LISTED_PROBLEMS",
    "check_image_files",
    "format_problems",
    "image_check_cache_dir",
    "read_image_size",
    "skip_bad_data_enabled",
    "skipping_bad_data",
]

logger = logging.getLogger(__name__)

#: How many bad files / annotations an error message lists (the rest are counted).
MAX_LISTED_PROBLEMS = 50
_CACHE_VERSION = 1
_CACHE_MAX_AGE_DAYS = 60
#: Datasets with fewer image files are checked without a cache (reading a few hundred headers
#: takes a fraction of a second; small throw-away datasets then leave no cache files behind).
MIN_FILES_TO_CACHE = 500
# EXIF orientations that swap width and height (OpenCV applies the rotation when decoding).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112

_SKIP_BAD_DATA: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cvpods_skip_bad_data", default=False
)


class BadDataError(ValueError):
    """A dataset refers to missing or unreadable files, or holds malformed annotations."""


@contextlib.contextmanager
def skipping_bad_data(skip: bool) -> Iterator[None]:
    """Within the block, dataset loaders drop bad annotations / files (counted) instead of
    raising :class:`BadDataError` (``DATASETS.SKIP_BAD_DATA``)."""
    token = _SKIP_BAD_DATA.set(bool(skip))
    try:
        yield
    finally:
        _SKIP_BAD_DATA.reset(token)


def skip_bad_data_enabled() -> bool:
    """Whether the current :func:`skipping_bad_data` block asks to skip bad data."""
    return _SKIP_BAD_DATA.get()


def format_problems(lines: Sequence[str], limit: int = MAX_LISTED_PROBLEMS) -> str:
    """Indented lines, at most ``limit`` of them, then "... and N more"."""
    shown = [f"  {line}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit} more")
    return "\n".join(shown)


# ------------------------------------------------------------------------------ reading headers


def read_image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` of the image in ``path`` as the data loader will see it.

    PIL reads only the header; EXIF orientations 5-8 swap the two sides (OpenCV rotates such
    images when decoding). Formats PIL does not know are decoded fully with OpenCV.

    Raises:
        OSError: the file cannot be decoded as an image (the message says why).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as pil_error:  # unidentified, truncated header, decompression bomb, ...
        data = np.fromfile(path, dtype=np.uint8)
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if decoded is None:
            reason = "empty file" if not data.size else str(pil_error).split("\n")[0]
            raise OSError(f"not a readable image ({reason})") from pil_error
        return int(decoded.shape[0]), int(decoded.shape[1])
    if orientation in _TRANSPOSING_ORIENTATIONS:
        height, width = width, height
    return int(height), int(width)


# ------------------------------------------------------------------------------------- the cache


def image_check_cache_dir() -> str:
    """``$CVPODS_CACHE/image_checks`` (default ``~/.cache/cvpods/image_checks``)."""
    from ..checkpoint.url_cache import cache_dir

    return os.path.join(cache_dir(), "image_checks")


def _cache_path(file_names: Sequence[str]) -> str:
    folders = sorted({os.path.dirname(os.path.abspath(f)) for f in file_names})
    digest = hashlib.sha1("\n".join(folders).encode("utf-8")).hexdigest()[:20]
    return os.path.join(image_check_cache_dir(), f"{digest}.json")


def _load_cache(path: str) -> dict[str, list[int]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        logger.debug("ignoring the unreadable image-check cache %s: %s", path, e)
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save_cache(path: str, files: dict[str, list[int]]) -> None:
    from ..checkpoint.file_io import atomic_write_text

    text = json.dumps({"version": _CACHE_VERSION, "files": files}, separators=(",", ":"))
    try:
        atomic_write_text(text, path)
    except OSError as e:  # read-only or full home: the check still worked, just not cached
        logger.info("could not write the image-check cache %s (%s); checks are not cached", path, e)
        return
    _prune_cache(os.path.dirname(path), keep=path)


def _prune_cache(folder: str, keep: str) -> None:
    """Delete cache files untouched for :data:`_CACHE_MAX_AGE_DAYS` (datasets gone long ago)."""
    limit = time.time() - _CACHE_MAX_AGE_DAYS * 86400
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if path != keep and name.endswith(".json"):
                with contextlib.suppress(OSError):
                    if os.stat(path).st_mtime < limit:
                        os.remove(path)


# ------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class ImageProblem:
    """One unusable image: its path and what is wrong with it."""

    file_name: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file_name}: {self.problem}"


def _inspect(path: str, cached: list[int] | None) -> tuple[list[int] | None, str | None]:
    """``(cache entry [size, mtime_ns, height, width] or None, problem or None)`` of one file."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None, "no such file"
    except OSError as e:
        return None, f"cannot access it ({e.strerror or e})"
    if not os.path.isfile(path):
        return None, "not a regular file"
    if cached is not None and cached[:2] == [stat.st_size, stat.st_mtime_ns]:
        return cached, None
    try:
        height, width = read_image_size(path)
    except OSError as e:
        return None, str(e)
    return [stat.st_size, stat.st_mtime_ns, height, width], None


def _find_problems(dataset_dicts: Sequence[dict], max_workers: int | None) -> list[ImageProblem]:
    """Every unusable image of ``dataset_dicts`` (reads and updates the cache)."""
    file_names = sorted({os.fspath(d["file_name"]) for d in dataset_dicts})
    if not file_names:
        return []
    use_cache = len(file_names) >= MIN_FILES_TO_CACHE
    cache_path = _cache_path(file_names)
    cache = _load_cache(cache_path) if use_cache else {}
    workers = max_workers or min(32, 4 * (os.cpu_count() or 1))
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="image-check") as pool:
        outcomes = list(pool.map(lambda f: _inspect(f, cache.get(f)), file_names))
    entries = {f: entry for f, (entry, _) in zip(file_names, outcomes) if entry is not None}
    problems_by_file = {f: problem for f, (_, problem) in zip(file_names, outcomes) if problem}
    fresh = sum(1 for f in entries if cache.get(f) != entries[f])
    logger.info(
        "Checked %d image files in %.1f s (%d headers read%s)",
        len(file_names),
        time.perf_counter() - start,
        fresh,
        f", the others known from {cache_path}" if use_cache else "",
    )
    if use_cache and (fresh or len(entries) != len(cache)):
        merged = {f: e for f, e in cache.items() if f not in problems_by_file}
        merged.update(entries)
        _save_cache(cache_path, merged)

    problems = []
    for d in dataset_dicts:
        name = os.fspath(d["file_name"])
        if name in problems_by_file:
            problems.append(ImageProblem(name, problems_by_file[name]))
            continue
        height, width = entries[name][2:]
        expected = (d.get("height"), d.get("width"))
        if None not in expected and (int(expected[0]), int(expected[1])) != (height, width):
            problems.append(
                ImageProblem(
                    name,
                    f"the image is {height}x{width} (HxW) but its annotations say "
                    f"{int(expected[0])}x{int(expected[1])}",
                )
            )
    return problems


def check_image_files(
    dataset_dicts: list[dict],
    dataset_name: str,
    *,
    skip_bad: bool = False,
    max_workers: int | None = None,
) -> list[dict]:
    """``dataset_dicts`` after checking every image file (exists, header decodes, size matches).

    Args:
        dataset_dicts: dicts with ``file_name`` and optionally ``height`` / ``width``.
        dataset_name: named in messages.
        skip_bad: leave bad images out (their count and the first few are logged) instead of
            raising.
        max_workers: threads reading headers (default: 4 per core, at most 32).

    Raises:
        BadDataError: some files are missing, unreadable or of another size; the message lists
            them all (up to :data:`MAX_LISTED_PROBLEMS`, then a count).
    """
    if comm.get_world_size() > 1:
        # Rank 0 checks (and writes the cache); every rank gets the same verdict.
        verdict: Any = None
        if comm.is_main_process():
            try:
                verdict = _find_problems(dataset_dicts, max_workers)
            except Exception as e:  # send the failure too, or the other ranks would hang
                verdict = f"{type(e).__name__}: {e}"
        verdict = comm.all_gather(verdict)[0]
        if isinstance(verdict, str):
            raise RuntimeError(f"checking the images of {dataset_name!r} failed: {verdict}")
        problems: list[ImageProblem] = verdict
    else:
        problems = _find_problems(dataset_dicts, max_workers)
    if not problems:
        return dataset_dicts
    lines = [str(p) for p in problems]
    if skip_bad:
        bad = {p.file_name for p in problems}
        kept = [d for d in dataset_dicts if os.fspath(d["file_name"]) not in bad]
        logger.warning(
            "dataset %r: skipped %d of %d images that cannot be used (DATASETS.SKIP_BAD_DATA):\n%s",
            dataset_name,
            len(dataset_dicts) - len(kept),
            len(dataset_dicts),
            format_problems(lines, limit=10),
        )
        return kept
    if len(lines) > MAX_LISTED_PROBLEMS:
        logger.debug(
            "All %d unusable images of %r:\n%s", len(lines), dataset_name, "\n".join(lines)
        )
    raise BadDataError(
        f"dataset {dataset_name!r}: {len(problems)} of {len(dataset_dicts)} images cannot be "
        f"used:\n{format_problems(lines)}\nFix or remove them, or set DATASETS.SKIP_BAD_DATA True "
        "to leave them out (their count is logged)."
    )
