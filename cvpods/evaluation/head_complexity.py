"""The head-complexity evaluator: per-image GFLOPs of a gated head, read from the model's outputs
(``"head_cost"``), gathered over all processes and summarised as avg / min / max."""

from __future__ import annotations

import logging

from ..modeling.meta_arch.head_complexity import MACS_PER_GFLOP
from ..utils import comm
from .evaluator import DatasetEvaluator

logger = logging.getLogger(__name__)

__all__ = ["HeadComplexityEvaluator"]


class HeadComplexityEvaluator(DatasetEvaluator):
    """Summarises the ``"head_cost"`` (:class:`~cvpods.layers.GateCost`, MACs) of each output.

    Outputs without ``"head_cost"`` (static heads) are ignored; when no process saw one,
    :meth:`evaluate` returns ``{}``. GFLOPs are the release's: MACs / 2**30.

    Args:
        log_period: log a running summary every this many images (0: never).
    """

    def __init__(self, log_period: int = 100) -> None:
        self.log_period = log_period
        self._gflops: list[float] = []
        self._full_gflops: list[float] = []

    def reset(self) -> None:
        """Drop the costs recorded so far."""
        self._gflops = []
        self._full_gflops = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Record the ``used`` and ``full`` MACs of each output's ``"head_cost"``, in GFLOPs."""
        before = len(self._gflops)
        for output in outputs:
            cost = output.get("head_cost")
            if cost is not None:
                self._gflops.append(float(cost.used.detach().double()) / MACS_PER_GFLOP)
                self._full_gflops.append(float(cost.full.detach().double()) / MACS_PER_GFLOP)
        if len(self._gflops) == before:
            return
        logger.debug("Head complexity: %s", self._running_line())
        if self.log_period and before // self.log_period != len(self._gflops) // self.log_period:
            logger.info("Head complexity: %s", self._running_line())

    def _running_line(self) -> str:
        values = self._gflops
        return (
            f"CUR: {values[-1]:.3f} GFLOPs, AVG: {sum(values) / len(values):.3f} GFLOPs, "
            f"MAX: {max(values):.3f} GFLOPs, MIN: {min(values):.3f} GFLOPs"
        )

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Collective (call on every process).

        Returns:
            ``{"head_complexity": {"avg_gflops", "min_gflops", "max_gflops", "num_images",
            "avg_full_gflops", "used_fraction"}}`` over the images of all processes, on every
            process: the used GFLOPs per image, the full cost per image (every position
            computed) and ``sum(used) / sum(full)``; ``{}`` when no output had a head cost.
        """
        parts = comm.all_gather((list(self._gflops), list(self._full_gflops)))
        gathered = [v for used, _ in parts for v in used]
        full = [v for _, full in parts for v in full]
        if not gathered:
            return {}
        summary = {
            "avg_gflops": sum(gathered) / len(gathered),
            "min_gflops": min(gathered),
            "max_gflops": max(gathered),
            "num_images": len(gathered),
            "avg_full_gflops": sum(full) / len(full),
            "used_fraction": sum(gathered) / sum(full),
        }
        logger.info(
            "Head complexity over %d images: avg %.4f, min %.4f, max %.4f GFLOPs",
            summary["num_images"],
            summary["avg_gflops"],
            summary["min_gflops"],
            summary["max_gflops"],
        )
        return {"head_complexity": summary}
