"""The training loop: :class:`HookBase`, :class:`TrainerBase` and :class:`SimpleTrainer`.

A trainer runs ``for iter in range(start_iter, max_iter): before_step(); run_step();
after_step()`` inside an :class:`~cvpods.utils.events.EventStorage`; everything else (learning
rate schedule, checkpoints, evaluation, logging) is a hook.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from cvpods.utils import comm
from cvpods.utils.events import EventStorage, get_event_storage

__all__ = ["HookBase", "SimpleTrainer", "TrainerBase"]

logger = logging.getLogger(__name__)


class HookBase:
    """Code run at fixed points of training. Subclasses override any of the four methods.

    ``self.trainer`` is set (as a weak proxy) by :meth:`TrainerBase.register_hooks`; inside the
    methods ``self.trainer.iter`` is the iteration being (or just) run.
    """

    trainer: TrainerBase

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the last iteration, also when training stopped with an error."""

    def before_step(self) -> None:
        """Called before every iteration."""

    def after_step(self) -> None:
        """Called after every iteration."""


class TrainerBase:
    """A loop over iterations calling the registered hooks around :meth:`run_step`.

    Attributes:
        iter: the current iteration; ``max_iter`` once training has completed.
        start_iter: the first iteration of this run (> 0 when resumed).
        max_iter: training stops before this iteration.
        storage: the :class:`EventStorage` open during :meth:`train`.
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.storage: EventStorage | None = None

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Append hooks (``None`` entries are skipped); they run in registration order."""
        for hook in hooks:
            if hook is None:
                continue
            if not isinstance(hook, HookBase):
                raise TypeError(f"hooks must derive from HookBase, got {type(hook).__name__}")
            # A weak proxy: hooks are owned by the trainer, no reference cycle.
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    @property
    def hooks(self) -> list[HookBase]:
        """The registered hooks, in the order they run (a copy)."""
        return list(self._hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1``."""
        logger.info("Starting training from iteration %d (of %d)", start_iter, max_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                self.iter = max_iter
            except Exception:
                logger.exception("Exception during training (iteration %d):", self.iter)
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        """Run every hook's ``before_train``."""
        for hook in self._hooks:
            hook.before_train()

    def after_train(self) -> None:
        """Run every hook's ``after_train`` (with ``storage.iter`` at the last iteration run)."""
        self.storage.iter = min(self.iter, self.max_iter - 1) if self.max_iter > 0 else 0
        for hook in self._hooks:
            hook.after_train()

    def before_step(self) -> None:
        """Point the storage at this iteration, then run every hook's ``before_step``."""
        self.storage.iter = self.iter
        for hook in self._hooks:
            hook.before_step()

    def after_step(self) -> None:
        """Run every hook's ``after_step``."""
        for hook in self._hooks:
            hook.after_step()

    def run_step(self) -> None:
        """One training iteration (subclasses implement it)."""
        raise NotImplementedError


def loss_tensors(outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor entries of a model's training outputs: the losses.

    Other values (a gated head's ``"head_cost"``, a :class:`~cvpods.layers.GateCost`) are
    outputs for the caller, not terms of the objective.
    """
    return {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}


def _sum_losses(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> torch.Tensor:
    """The sum of the losses; a FloatingPointError naming the non-finite ones and the iteration."""
    if not loss_dict:
        raise ValueError(f"the model returned no losses at iteration {iteration}")
    values = [v if v.dim() == 0 else v.sum() for v in loss_dict.values()]
    stacked = torch.stack([v.detach().float() for v in values])
    if not bool(torch.isfinite(stacked).all()):
        named = dict(zip(loss_dict, stacked.tolist()))
        bad = {k: v for k, v in named.items() if not math.isfinite(v)}
        all_losses = {k: round(v, 6) for k, v in named.items()}
        raise FloatingPointError(
            f"non-finite loss at iteration {iteration}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + f" (all losses: {all_losses})"
        )
    return sum(values[1:], values[0])


class SimpleTrainer(TrainerBase):
    """One optimisation step per iteration: next batch -> losses -> backward -> optimizer step.

    Args:
        model: called on a batch (a list of dicts) in training mode; returns a dict of scalar
            loss tensors (their sum is minimised; entries that are not tensors, such as a gated
            head's ``"head_cost"``, are left out).
        data_loader: an iterable yielding batches forever.
        optimizer: any torch optimizer.
        amp: mixed precision (float16 autocast and a gradient scaler); CUDA only.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        amp: bool = False,
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.amp = amp
        self.grad_scaler: torch.amp.GradScaler | None = None
        if amp:
            if not _on_cuda(model):
                raise ValueError(
                    "SOLVER.AMP.ENABLED=True needs the model on a CUDA device; this model is on "
                    f"{_device_of(model)} (set SOLVER.AMP.ENABLED False or MODEL.DEVICE cuda)"
                )
            self.grad_scaler = torch.amp.GradScaler("cuda")
        self._data_loader_iter: Iterator | None = None

    @property
    def data_loader_iter(self) -> Iterator:
        """The iterator over :attr:`data_loader`, created on first use."""
        if self._data_loader_iter is None:
            self._data_loader_iter = iter(self.data_loader)
        return self._data_loader_iter

    def run_step(self) -> None:
        """Next batch, forward, sum of the losses, backward, optimizer step; records the losses
        (averaged over processes), their sum ``total_loss`` and ``data_time`` (seconds spent
        waiting for the batch). A non-finite loss raises FloatingPointError naming it."""
        if not self.model.training:
            raise RuntimeError("SimpleTrainer: the model was left in eval mode")
        start = time.perf_counter()
        data = next(self.data_loader_iter)
        data_time = time.perf_counter() - start

        autocast = torch.autocast(device_type="cuda") if self.amp else contextlib.nullcontext()
        with autocast:
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        loss_dict = loss_tensors(loss_dict)
        losses = _sum_losses(loss_dict, self.iter)

        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            losses.backward()
            self.optimizer.step()
        self._write_metrics(loss_dict, data_time)

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
        """Record the losses (averaged over processes) and data time (their max) on rank 0."""
        metrics: dict[str, float] = {
            k: float(v.detach().float().sum()) for k, v in loss_dict.items()
        }
        metrics["data_time"] = data_time
        gathered = comm.gather(metrics)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        storage.put_scalar("data_time", max(m.pop("data_time") for m in gathered))
        averaged = {k: sum(m[k] for m in gathered) / len(gathered) for k in gathered[0]}
        storage.put_scalar("total_loss", sum(averaged.values()))
        if len(averaged) > 1 or "total_loss" not in averaged:
            storage.put_scalars(**averaged)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _on_cuda(model: nn.Module) -> bool:
    return _device_of(model).type == "cuda"
