"""The standard training hooks: timing, LR schedule, checkpoints, evaluation, writers."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from cvpods.checkpoint.periodic_checkpointer import PeriodicCheckpointer as _CheckpointSchedule
from cvpods.utils import comm
from cvpods.utils.env import preserve_rng_state
from cvpods.utils.events import EventWriter

from .train_loop import HookBase

__all__ = [
    "EvalHook",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "flatten_results",
]

logger = logging.getLogger(__name__)


class IterationTimer(HookBase):
    """Record the wall time of every iteration as the scalar ``time`` (seconds) and log totals.

    The first ``warmup_iter`` iterations (slow: allocations, worker start-up) are left out of
    the reported average speed.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = warmup_iter
        self._step_start = 0.0
        self._train_start = 0.0
        self._timed_iters = 0
        self._timed_seconds = 0.0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()
        self._timed_iters = 0
        self._timed_seconds = 0.0

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        seconds = time.perf_counter() - self._step_start
        if self.trainer.iter >= self.trainer.start_iter + self._warmup_iter:
            self._timed_iters += 1
            self._timed_seconds += seconds
        self.trainer.storage.put_scalar("time", seconds)

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        if self._timed_iters > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                self._timed_iters,
                datetime.timedelta(seconds=int(self._timed_seconds)),
                self._timed_seconds / self._timed_iters,
            )
        logger.info("Total training time: %s", datetime.timedelta(seconds=int(total)))


def _main_param_group(optimizer: torch.optim.Optimizer) -> int:
    """The index of the group named "default" if any, else of the group with most parameters."""
    for index, group in enumerate(optimizer.param_groups):
        if group.get("name") == "default":
            return index
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    return max(range(len(sizes)), key=sizes.__getitem__)


class LRScheduler(HookBase):
    """Record the learning rate (scalar ``lr``) and step the scheduler after every iteration.

    Args:
        optimizer, scheduler: default to the trainer's ``optimizer`` and ``scheduler``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._group = 0

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        self._scheduler = self._scheduler or self.trainer.scheduler
        self._group = _main_param_group(self._optimizer)

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self._scheduler.step()


class PeriodicCheckpointer(_CheckpointSchedule, HookBase):
    """:class:`cvpods.checkpoint.PeriodicCheckpointer` as a training hook (same schedule).

    ``model_{iter:07d}.pth`` after every ``period`` iterations and ``model_final.pth`` after the
    last one; at most ``max_to_keep`` periodic files are kept. Each file also holds what
    ``state_fn()`` returns (the trainer's RNG and data-loader state); ``state_fn`` runs on every
    process at the saving iterations (it may use collectives), the file is written by rank 0.

    Args:
        checkpointer: a :class:`cvpods.checkpoint.DetectionCheckpointer`.
        period: iterations between checkpoints (> 0).
        max_iter: the training length (for ``model_final``).
        max_to_keep: periodic checkpoints to keep (``None`` or 0: all).
        state_fn: extra entries for the checkpoint, e.g. ``{"rng": ...}``.
    """

    def __init__(
        self,
        checkpointer: Any,
        period: int,
        max_iter: int,
        max_to_keep: int | None = None,
        state_fn: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(checkpointer, period, max_iter=max_iter, max_to_keep=max_to_keep or None)
        self._state_fn = state_fn

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if not self.saves_at(iteration):
            return
        extra = self._state_fn() if self._state_fn is not None else {}
        if comm.is_main_process():
            self.step(iteration, **extra)
        comm.synchronize()


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"ds": {"bbox": {"AP": 40.1}}}`` -> ``{"ds/bbox/AP": 40.1}``; non-numbers are skipped."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            flat[name] = float(value)
    return flat


class EvalHook(HookBase):
    """Evaluate every ``eval_period`` iterations (0: never during training) and after the last.

    ``eval_function()`` returns a nested dict of results; its numbers are recorded as scalars
    (``dataset/bbox/AP``...) and the dict is kept in :attr:`latest_results`. The global random
    generators are restored after each evaluation, so evaluating does not change training.
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Mapping[str, Any]]) -> None:
        self._period = eval_period
        self._function = eval_function
        self.latest_results: Mapping[str, Any] | None = None

    def _do_eval(self) -> None:
        model = getattr(self.trainer, "model", None)
        was_training = model.training if model is not None else None
        with preserve_rng_state():
            results = self._function()
        if model is not None:
            model.train(was_training)
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(f"the eval function must return a dict, got {type(results)}")
            flat = flatten_results(results)
            self.trainer.storage.put_scalars(smoothing_hint=False, **flat)
            self.latest_results = results
        # Processes finish evaluation at different times; wait for all before going on.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter < self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        # Only when training completed (not after an exception).
        if self.trainer.iter >= self.trainer.max_iter:
            self._do_eval()


class PeriodicWriter(HookBase):
    """Call the writers every ``period`` iterations, after the last one and at the end."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        for writer in writers:
            if not isinstance(writer, EventWriter):
                raise TypeError(
                    f"writers must derive from EventWriter, got {type(writer).__name__}"
                )
        self._writers = list(writers)
        self._period = period

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if (iteration + 1) % self._period == 0 or iteration == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            # Evaluation results recorded after the last step are written here.
            writer.write()
            writer.close()
