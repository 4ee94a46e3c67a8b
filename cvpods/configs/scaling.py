"""The release's GPU-count scaling of the solver settings (linear scaling rule).

The official configs are written for a reference number of processes, ``IMS_PER_BATCH /
IMS_PER_DEVICE`` (16 / 2 = 8 GPUs). On ``world_size`` processes the release keeps the images per
device and scales the schedule with the total batch: with
``ratio = world_size * IMS_PER_DEVICE / IMS_PER_BATCH``

* ``SOLVER.IMS_PER_BATCH`` and ``SOLVER.BASE_LR`` are multiplied by ``ratio``;
* ``SOLVER.MAX_ITER``, ``SOLVER.STEPS``, ``SOLVER.CHECKPOINT_PERIOD`` and ``TEST.EVAL_PERIOD``
  (when > 0) are divided by it (rounded down), so that training sees the same number of images.

Warm-up iterations are left as they are (as in the release). The rule applies when
``SOLVER.IMS_PER_DEVICE`` is set (the official experiments) and ``SOLVER.SCALE_WITH_WORLD_SIZE``
is true (the default); otherwise ``IMS_PER_BATCH`` is the fixed total batch, split across the
processes (the CPU shapes experiments). Applying it again on the same number of processes changes
nothing: after scaling, ``IMS_PER_BATCH == world_size * IMS_PER_DEVICE``.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any

from .base_config import ConfigError

__all__ = ["adjust_config", "scaling_ratio"]

logger = logging.getLogger(__name__)


def scaling_ratio(cfg: Any, world_size: int) -> Fraction | None:
    """``world_size * IMS_PER_DEVICE / IMS_PER_BATCH``, or None when the rule does not apply."""
    solver = cfg.SOLVER
    per_device = solver.get("IMS_PER_DEVICE")
    if per_device is None or not solver.get("SCALE_WITH_WORLD_SIZE", True):
        return None
    per_device, total = int(per_device), int(solver.IMS_PER_BATCH)
    if per_device <= 0 or total <= 0 or total % per_device:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of "
            f"SOLVER.IMS_PER_DEVICE ({per_device}): the configs are written for "
            "IMS_PER_BATCH / IMS_PER_DEVICE processes"
        )
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return Fraction(world_size * per_device, total)


def _iterations(value: int, ratio: Fraction) -> int:
    return int(Fraction(int(value)) / ratio)


def adjust_config(cfg: Any, world_size: int) -> dict[str, tuple[Any, Any]]:
    """Scale ``cfg`` in place for ``world_size`` processes (see the module docstring).

    Returns:
        ``{key: (old, new)}`` for every key that changed (empty when nothing did). The change is
        logged.
    """
    ratio = scaling_ratio(cfg, world_size)
    solver = cfg.SOLVER
    if ratio is None:
        if solver.get("IMS_PER_DEVICE") is not None:
            logger.info(
                "SOLVER.SCALE_WITH_WORLD_SIZE is off: fixed total batch %d over %d process(es)",
                solver.IMS_PER_BATCH,
                world_size,
            )
        return {}
    reference = int(solver.IMS_PER_BATCH) // int(solver.IMS_PER_DEVICE)
    new = {
        "SOLVER.IMS_PER_BATCH": int(Fraction(int(solver.IMS_PER_BATCH)) * ratio),
        "SOLVER.BASE_LR": float(Fraction(solver.BASE_LR) * ratio),
        "SOLVER.MAX_ITER": _iterations(solver.MAX_ITER, ratio),
        "SOLVER.STEPS": type(solver.STEPS)(_iterations(s, ratio) for s in solver.STEPS),
        "SOLVER.CHECKPOINT_PERIOD": _iterations(solver.CHECKPOINT_PERIOD, ratio),
    }
    if cfg.TEST.EVAL_PERIOD > 0:
        new["TEST.EVAL_PERIOD"] = _iterations(cfg.TEST.EVAL_PERIOD, ratio)
    changes = {}
    for key, value in new.items():
        old = cfg.get_key(key)
        if old != value:
            cfg.set_key(key, value)
            changes[key] = (old, value)
    if changes:
        logger.info(
            "Scaled the solver from %d to %d process(es) at %d images per device (linear rule, "
            "SOLVER.SCALE_WITH_WORLD_SIZE=False keeps the total batch): %s",
            reference,
            world_size,
            int(solver.IMS_PER_DEVICE),
            ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()),
        )
    else:
        logger.info(
            "SOLVER settings are for %d process(es) at %d images per device: no scaling needed",
            world_size,
            int(solver.IMS_PER_DEVICE),
        )
    return changes
