"""Where datasets live: the dataset root.

One root serves every entry point (the quickstart, ``cvpods_train`` / ``cvpods_test`` in any
experiment folder, the demo), so generated and downloaded data is found once and shared:

1. ``$CVPODS_DATASETS`` when set;
2. else, when cvpods runs from a source checkout (``pip install -e .``), the checkout's
   ``datasets/`` folder (recognised by its ``README.md``);
3. else ``./datasets`` relative to the current folder.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATASET_ROOT_ENV", "default_dataset_root", "get_dataset_root"]

DATASET_ROOT_ENV = "CVPODS_DATASETS"

#: The source checkout's dataset folder (only used when it exists, see the module docstring).
_CHECKOUT_DATASETS = Path(__file__).resolve().parents[3] / "datasets"


def default_dataset_root() -> str:
    """The root used when ``$CVPODS_DATASETS`` is not set (see the module docstring)."""
    if (_CHECKOUT_DATASETS / "README.md").is_file():
        return str(_CHECKOUT_DATASETS)
    return os.path.abspath("datasets")


def get_dataset_root(root: str | os.PathLike | None = None) -> str:
    """The absolute dataset root: ``root``, else ``$CVPODS_DATASETS``, else the default root."""
    if root is None:
        root = os.environ.get(DATASET_ROOT_ENV) or default_dataset_root()
    return os.path.abspath(os.path.expanduser(os.fspath(root)))
