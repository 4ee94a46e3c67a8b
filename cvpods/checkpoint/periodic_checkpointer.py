"""Saving a checkpoint every N iterations and at the end: :class:`PeriodicCheckpointer`."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from .detection_checkpoint import DetectionCheckpointer

__all__ = ["PeriodicCheckpointer"]

logger = logging.getLogger(__name__)

_PERIODIC_NAME = re.compile(r"model_(\d{7,})\.pth")


class PeriodicCheckpointer:
    """Calls ``checkpointer.save`` on a schedule.

    ``step(iteration)`` (0-based iterations) saves ``model_{iteration:07d}.pth`` when
    ``(iteration + 1) % period == 0`` and ``model_final.pth`` when ``iteration == max_iter - 1``.
    With ``max_to_keep`` (> 0), only the newest ``max_to_keep`` periodic files up to the current
    iteration are kept in the save folder (older ones are deleted; ``model_final.pth`` never is).

    Args:
        checkpointer: the :class:`DetectionCheckpointer` that writes the files.
        period: iterations between periodic checkpoints (> 0).
        max_iter: total iterations of the run (None: no final checkpoint).
        max_to_keep: periodic checkpoints to keep (None or 0: all).
    """

    def __init__(
        self,
        checkpointer: DetectionCheckpointer,
        period: int,
        max_iter: int | None = None,
        max_to_keep: int | None = None,
    ) -> None:
        if int(period) <= 0:
            raise ValueError(
                f"checkpoint period must be a positive number of iterations, got {period}"
            )
        if max_to_keep is not None and int(max_to_keep) < 0:
            raise ValueError(f"max_to_keep must be >= 0 (0 or None keeps all), got {max_to_keep}")
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_iter = None if max_iter is None else int(max_iter)
        self.max_to_keep = int(max_to_keep) if max_to_keep else None

    def _periodic_due(self, iteration: int) -> bool:
        return (iteration + 1) % self.period == 0

    def _final_due(self, iteration: int) -> bool:
        return self.max_iter is not None and iteration == self.max_iter - 1

    def saves_at(self, iteration: int) -> bool:
        """Whether :meth:`step` writes a file after ``iteration`` (0-based): the schedule."""
        return self._periodic_due(int(iteration)) or self._final_due(int(iteration))

    def step(self, iteration: int, **extra: Any) -> None:
        """Save what is due after ``iteration``; ``extra`` (plus ``iteration``) goes in the file."""
        iteration = int(iteration)
        extra["iteration"] = iteration
        if self._periodic_due(iteration):
            self.checkpointer.save(f"model_{iteration:07d}", **extra)
            if self.max_to_keep is not None:
                self._delete_old(iteration)
        if self._final_due(iteration):
            self.checkpointer.save("model_final", **extra)

    def save(self, name: str, **extra: Any) -> None:
        """Save now, under ``name`` (forwarded to the checkpointer)."""
        self.checkpointer.save(name, **extra)

    def _delete_old(self, iteration: int) -> None:
        """Delete the periodic files beyond the newest ``max_to_keep`` up to ``iteration``."""
        if not self.checkpointer.writes_files():
            return
        folder = self.checkpointer.save_dir
        periodic = []
        for filename in os.listdir(folder):
            match = _PERIODIC_NAME.fullmatch(filename)
            if match and int(match[1]) <= iteration:
                periodic.append((int(match[1]), filename))
        periodic.sort()
        for _, filename in periodic[: max(0, len(periodic) - self.max_to_keep)]:
            path = os.path.join(folder, filename)
            try:
                os.remove(path)
                logger.info("Deleted old checkpoint %s", path)
            except FileNotFoundError:
                pass
