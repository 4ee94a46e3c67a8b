"""The environment: seeding, saving/restoring random-number-generator state, an info table."""

from __future__ import annotations

import logging
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = [
    "collect_env_info",
    "get_rng_state",
    "preserve_rng_state",
    "seed_all_rng",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


def seed_all_rng(seed: int | None = None) -> int:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Args:
        seed: the seed; ``None`` or a negative value draws a fresh one from the OS.

    Returns:
        the seed used (log it to reproduce a run).
    """
    if seed is None or seed < 0:
        seed = (os.getpid() + int(time.time() * 1e6) + int.from_bytes(os.urandom(2), "big")) % (
            2**31
        )
        logger.info("Using a random seed: %d", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def get_rng_state() -> dict[str, Any]:
    """The state of every global generator, made only of tensors, numbers, strings and tuples.

    The result survives ``torch.save`` / ``torch.load(weights_only=True)`` and is restored
    with :func:`set_rng_state`.
    """
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _as_python_state(value: Any) -> Any:
    """``random.setstate`` needs tuples; a state read back from a checkpoint may hold lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_python_state(v) for v in value)
    return value


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from a :func:`get_rng_state` result."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state lacks the entries {sorted(missing)}; got {sorted(state)}")
    random.setstate(_as_python_state(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {
                "key": np.asarray(np_state["key"].numpy(), dtype=np.uint32),
                "pos": int(np_state["pos"]),
            },
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "Saved CUDA RNG state covers %d devices but %d are visible; not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


@contextmanager
def preserve_rng_state() -> Iterator[None]:
    """Run a block (e.g. an evaluation) without changing any global generator's state."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _version_of(module_name: str, distribution: str | None = None) -> str:
    """A module's ``__version__``, else its installed distribution's version."""
    from importlib import metadata

    try:
        module = __import__(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is just reported
        return f"not available ({type(exc).__name__})"
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = metadata.version(distribution or module_name)
        except metadata.PackageNotFoundError:
            version = "unknown"
    return str(version)


def collect_env_info() -> str:
    """A short two-column table: platform, Python, library versions, devices, threads."""
    from tabulate import tabulate

    import cvpods

    rows: list[tuple[str, str]] = [
        ("sys.platform", f"{sys.platform} ({platform.machine()})"),
        ("Python", sys.version.replace("\n", " ")),
        ("numpy", np.__version__),
        ("cvpods", f"{cvpods.__version__} @ {os.path.dirname(cvpods.__file__)}"),
        ("cvpods._C extension", "yes" if cvpods.extension_available() else "no"),
        ("PyTorch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        ("torchvision", _version_of("torchvision")),
        ("OpenCV", _version_of("cv2")),
        ("pycocotools", _version_of("pycocotools")),
        ("CPU count / torch threads", f"{os.cpu_count()} / {torch.get_num_threads()}"),
    ]
    cuda = torch.cuda.is_available()
    rows.append(("CUDA available", str(cuda)))
    if cuda:
        rows.append(("CUDA (torch built with)", str(torch.version.cuda)))
        rows.append(("cuDNN", str(torch.backends.cudnn.version())))
        for index in range(torch.cuda.device_count()):
            rows.append((f"GPU {index}", torch.cuda.get_device_name(index)))
    rows.append(("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "<not set>")))
    return tabulate(rows, tablefmt="simple")
