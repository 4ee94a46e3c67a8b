"""Per-iteration learning-rate schedules with a warm-up: multi-step and cosine.

Both are :class:`torch.optim.lr_scheduler.LRScheduler` subclasses stepped once per iteration
(``last_epoch`` counts iterations) and saved/restored with ``state_dict``/``load_state_dict``.
The learning rate of each parameter group at iteration ``t`` is
``base_lr * warmup_factor(t) * decay(t)``.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from cvpods.configs import ConfigError

__all__ = ["WarmupCosineLR", "WarmupMultiStepLR", "build_lr_scheduler", "warmup_factor_at_iter"]

logger = logging.getLogger(__name__)

_WARMUP_METHODS = ("linear", "constant")


def warmup_factor_at_iter(
    method: str, iteration: int, warmup_iters: int, warmup_factor: float
) -> float:
    """The warm-up multiplier at ``iteration``: 1 from ``warmup_iters`` on.

    ``"constant"``: ``warmup_factor`` during the warm-up. ``"linear"``: rises linearly from
    ``warmup_factor`` at iteration 0 towards 1 at ``warmup_iters``.
    """
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1.0 - alpha) + alpha
    raise ValueError(f"unknown warm-up method {method!r}; expected one of {_WARMUP_METHODS}")


class _WarmupLR(LRScheduler):
    """Shared warm-up handling; subclasses define :meth:`_decay`.

    ``undecayed_groups``: names (the ``"name"`` key of :func:`~cvpods.solver.get_param_groups`'
    groups) of parameter groups that get the warm-up but not the decay, e.g. ``("gate",)``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
        undecayed_groups: Sequence[str] = (),
    ) -> None:
        if warmup_method not in _WARMUP_METHODS:
            raise ValueError(
                f"warmup_method must be one of {_WARMUP_METHODS}, got {warmup_method!r}"
            )
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        self.undecayed = [group.get("name") in undecayed_groups for group in optimizer.param_groups]
        super().__init__(optimizer, last_epoch)

    def _decay(self, iteration: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        warmup = warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor
        )
        decay = self._decay(self.last_epoch)
        return [
            base_lr * warmup * (1.0 if undecayed else decay)
            for base_lr, undecayed in zip(self.base_lrs, self.undecayed)
        ]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupMultiStepLR(_WarmupLR):
    """Warm-up, then the rate times ``gamma`` at each milestone iteration."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
        undecayed_groups: Sequence[str] = (),
    ) -> None:
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing iterations, got {milestones}")
        self.milestones = milestones
        self.gamma = float(gamma)
        super().__init__(
            optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch, undecayed_groups
        )

    def _decay(self, iteration: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, iteration)


class WarmupCosineLR(_WarmupLR):
    """Warm-up, then a half cosine from the base rate at iteration 0 to 0 at ``max_iters``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
        undecayed_groups: Sequence[str] = (),
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f"max_iters must be > 0, got {max_iters}")
        self.max_iters = int(max_iters)
        super().__init__(
            optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch, undecayed_groups
        )

    def _decay(self, iteration: int) -> float:
        progress = min(iteration, self.max_iters) / self.max_iters
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """The schedule named by SOLVER.LR_SCHEDULER_NAME (``WarmupMultiStepLR``/``WarmupCosineLR``).

    Uses SOLVER.STEPS, GAMMA, MAX_ITER, WARMUP_FACTOR, WARMUP_ITERS and WARMUP_METHOD; with
    SOLVER.GATE_LR_DECAY False the spatial gates' group (``"gate"``) is not decayed.
    """
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if solver.WARMUP_METHOD not in _WARMUP_METHODS:
        raise ConfigError(
            f"SOLVER.WARMUP_METHOD must be one of {_WARMUP_METHODS}, got {solver.WARMUP_METHOD!r}"
        )
    common = dict(
        warmup_factor=solver.WARMUP_FACTOR,
        warmup_iters=solver.WARMUP_ITERS,
        warmup_method=solver.WARMUP_METHOD,
        undecayed_groups=() if solver.get("GATE_LR_DECAY", True) else ("gate",),
    )
    if name == "WarmupMultiStepLR":
        steps = list(solver.STEPS)
        if steps != sorted(steps):
            raise ConfigError(f"SOLVER.STEPS must be increasing iterations, got {solver.STEPS!r}")
        late = [s for s in steps if s >= solver.MAX_ITER]
        if late:
            logger.warning(
                "SOLVER.STEPS %s are >= SOLVER.MAX_ITER=%d and will never take effect",
                late,
                solver.MAX_ITER,
            )
        return WarmupMultiStepLR(optimizer, steps, gamma=solver.GAMMA, **common)
    if name == "WarmupCosineLR":
        return WarmupCosineLR(optimizer, solver.MAX_ITER, **common)
    raise ConfigError(
        f"SOLVER.LR_SCHEDULER_NAME must be 'WarmupMultiStepLR' or 'WarmupCosineLR', got {name!r}"
    )
