"""Where datasets live: the dataset root."""

from __future__ import annotations

import os

__all__ = ["DATASET_ROOT_ENV", "get_dataset_root"]

DATASET_ROOT_ENV = "CVPODS_DATASETS"


def get_dataset_root(root: str | os.PathLike | None = None) -> str:
    """The absolute dataset root: ``root``, else ``$CVPODS_DATASETS``, else ``./datasets``."""
    if root is None:
        root = os.environ.get(DATASET_ROOT_ENV) or "datasets"
    return os.path.abspath(os.path.expanduser(os.fspath(root)))
