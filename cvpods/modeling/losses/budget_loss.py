"""The FLOPs-budget loss of the dynamic heads: ``lambda * mean(soft cost / full cost)``.

The soft cost (:class:`~cvpods.layers.spatial_gate.GateCost`) sums, over the gated units, the
gate values times each unit's MACs per position, so its gradient pushes every open gate towards
zero in proportion to what the gate's unit costs. An optional linear warm-up ramps lambda from 0
over the first iterations of training, so that the head learns features before its gates close
(used by the short CPU schedules of the shapes experiments; the release has none).
"""

from __future__ import annotations

import torch

from cvpods.layers.spatial_gate import GateCost
from cvpods.utils.events import get_event_storage

__all__ = ["budget_loss", "budget_loss_weight"]


def budget_loss_weight(budget_lambda: float, warmup_iters: int = 0) -> float:
    """The budget loss weight at the current training iteration.

    Args:
        budget_lambda: the full weight (MODEL.FCOS.BUDGET_LOSS_LAMBDA or MODEL.RPN's).
        warmup_iters: length of the linear ramp from 0 to ``budget_lambda``, in iterations
            (0: no ramp). The iteration is the active event storage's; outside a trainer (no
            storage) the full weight is used.

    Returns:
        ``budget_lambda * min(1, (iteration + 1) / warmup_iters)``, or ``budget_lambda``.
    """
    if warmup_iters <= 0:
        return budget_lambda
    try:
        iteration = get_event_storage().iter
    except RuntimeError:  # not inside a trainer
        return budget_lambda
    return budget_lambda * min(1.0, (iteration + 1) / warmup_iters)


def budget_loss(cost: GateCost, budget_lambda: float, warmup_iters: int = 0) -> torch.Tensor:
    """``weight * mean over images of (cost.soft / cost.full)`` (a scalar).

    Args:
        cost: the head's per-image cost, fields ``[N]`` in MACs.
        budget_lambda: the loss weight after warm-up.
        warmup_iters: see :func:`budget_loss_weight`.
    """
    return (cost.soft / cost.full).mean() * budget_loss_weight(budget_lambda, warmup_iters)
