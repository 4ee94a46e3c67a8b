"""Training metrics: an :class:`EventStorage` that records scalars per iteration, and writers.

The trainer opens one storage for the whole run (``with EventStorage(start_iter) as storage``);
anything running inside it (the model, hooks) can record a scalar with::

    get_event_storage().put_scalar("complexity_ratio", 0.42)

Writers read the storage periodically: :class:`CommonMetricPrinter` (console, with ETA),
:class:`JSONWriter` (``metrics.json``, one JSON object per line) and
:class:`TensorboardXWriter` (TensorBoard event files).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

from .file_io import atomic_write

__all__ = [
    "put_scalar_if_recording",
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "HistoryBuffer",
    "JSONWriter",
    "NoEventStorageError",
    "TensorboardXWriter",
    "get_event_storage",
]

# The storages currently open, innermost last (the `with` statement pushes and pops).
_STORAGE_STACK: list[EventStorage] = []


class NoEventStorageError(RuntimeError, AssertionError):
    """get_event_storage() outside a storage (an AssertionError in cvpods, hence both)."""


def put_scalar_if_recording(name: str, value: float) -> None:
    """Log a training scalar to the active event storage, if there is one (else do nothing)."""
    try:
        storage = get_event_storage()
    except RuntimeError:  # not inside a trainer
        return
    storage.put_scalar(name, value)


def get_event_storage() -> EventStorage:
    """The innermost open :class:`EventStorage`.

    Raises:
        RuntimeError: when no storage is open (outside a trainer's ``train()``).
    """
    if not _STORAGE_STACK:
        raise NoEventStorageError(
            "get_event_storage() called outside an EventStorage context: no training is running "
            "(open one with `with EventStorage():`)"
        )
    return _STORAGE_STACK[-1]


class HistoryBuffer:
    """The recent values of one scalar with the iterations they were recorded at.

    Keeps the last ``max_length`` values for windowed statistics and a running sum/count over
    every value ever added for :meth:`global_avg`.
    """

    def __init__(self, max_length: int = 100_000) -> None:
        self._data: deque[tuple[float, int]] = deque(maxlen=max_length)
        self._total = 0.0
        self._count = 0

    def update(self, value: float, iteration: int) -> None:
        self._data.append((value, iteration))
        self._total += value
        self._count += 1

    def latest(self) -> float:
        if not self._data:
            raise IndexError("empty history")
        return self._data[-1][0]

    def _window(self, window_size: int) -> list[float]:
        if not self._data:
            raise IndexError("empty history")
        return [v for v, _ in list(self._data)[-window_size:]]

    def median(self, window_size: int) -> float:
        """Median of the last ``window_size`` values."""
        return float(statistics.median(self._window(window_size)))

    def avg(self, window_size: int) -> float:
        """Mean of the last ``window_size`` values."""
        values = self._window(window_size)
        return float(sum(values) / len(values))

    def global_avg(self) -> float:
        """Mean of every value ever added."""
        if not self._count:
            raise IndexError("empty history")
        return self._total / self._count

    def values(self) -> list[tuple[float, int]]:
        """The kept ``(value, iteration)`` pairs, oldest first."""
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)


class EventStorage:
    """Scalars recorded during training, keyed by name, with the iteration they belong to.

    Use it as a context manager; :func:`get_event_storage` returns the innermost open one.

    Attributes:
        iter: the current iteration (the trainer sets it before every step).
    """

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._histories: dict[str, HistoryBuffer] = {}
        self._latest: dict[str, tuple[float, int]] = {}
        self._smoothing_hints: dict[str, bool] = {}
        self._current_prefix = ""

    @property
    def iteration(self) -> int:
        """The current iteration (the same as :attr:`iter`)."""
        return self.iter

    @iteration.setter
    def iteration(self, value: int) -> None:
        self.iter = int(value)

    @contextlib.contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Scalars recorded inside are named ``"<name>/<scalar>"`` (the innermost scope wins)."""
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix

    # ------------------------------------------------------------------ recording
    def put_scalar(
        self, name: str, value: float | torch.Tensor, smoothing_hint: bool = True
    ) -> None:
        """Record ``value`` for ``name`` at the current iteration.

        Args:
            name: the metric's name (``"loss_cls"``, ``"lr"``, ``"bbox/AP"``...).
            value: a Python number or a one-element tensor.
            smoothing_hint: whether writers should show a windowed median rather than the
                latest value (losses: yes; learning rate, evaluation results: no).
        """
        name = self._current_prefix + name
        if isinstance(value, torch.Tensor):
            value = value.detach().item()
        value = float(value)
        history = self._histories.get(name)
        if history is None:
            history = self._histories[name] = HistoryBuffer()
        history.update(value, self.iter)
        self._latest[name] = (value, self.iter)
        previous_hint = self._smoothing_hints.setdefault(name, smoothing_hint)
        if previous_hint != smoothing_hint:
            raise ValueError(
                f"scalar {name!r} was recorded with smoothing_hint={previous_hint} before "
                f"and now with smoothing_hint={smoothing_hint}"
            )

    def put_scalars(self, *, smoothing_hint: bool = True, **scalars: float | torch.Tensor) -> None:
        """Record several scalars at once: ``put_scalars(loss_cls=0.3, loss_box=0.2)``."""
        for name, value in scalars.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def step(self) -> None:
        """Advance :attr:`iter` by one."""
        self.iter += 1

    # ------------------------------------------------------------------ reading
    def history(self, name: str) -> HistoryBuffer:
        """The :class:`HistoryBuffer` of ``name``; a KeyError naming the known scalars if absent."""
        if name not in self._histories:
            known = ", ".join(sorted(self._histories)) or "none"
            raise KeyError(f"no scalar named {name!r} was recorded (recorded: {known})")
        return self._histories[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        return dict(self._histories)

    def latest(self) -> dict[str, tuple[float, int]]:
        """``{name: (latest value, iteration it was recorded at)}``."""
        return dict(self._latest)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> dict[str, tuple[float, int]]:
        """Like :meth:`latest`, with smoothed scalars replaced by their median over the window."""
        result = {}
        for name, (value, iteration) in self._latest.items():
            if self._smoothing_hints[name]:
                value = self._histories[name].median(window_size)
            result[name] = (value, iteration)
        return result

    def smoothing_hints(self) -> dict[str, bool]:
        return dict(self._smoothing_hints)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> EventStorage:
        _STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not _STORAGE_STACK or _STORAGE_STACK[-1] is not self:
            raise RuntimeError("EventStorage contexts were closed out of order")
        _STORAGE_STACK.pop()


class EventWriter:
    """Something that periodically writes the open storage's metrics somewhere."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class CommonMetricPrinter(EventWriter):
    """Log one console line: ETA, iteration, losses, time, data time, lr and CUDA memory.

    ``time`` and ``data_time`` are medians over the window, in seconds per iteration; the ETA
    comes from the average iteration time over the window times the iterations left, and is
    also recorded as the scalar ``eta_seconds``.
    """

    def __init__(self, max_iter: int, window_size: int = 20) -> None:
        self._logger = logging.getLogger("cvpods.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        # (iteration, wall time) of the last write: the ETA fallback when "time" is absent.
        self._last_write: tuple[int, float] | None = None
        self._last_printed_iter = -1

    def _eta(self, storage: EventStorage, iteration: int) -> str:
        remaining = self._max_iter - iteration - 1
        try:
            seconds_per_iter = storage.history("time").avg(self._window_size)
        except KeyError:
            seconds_per_iter = None
        if seconds_per_iter is None and self._last_write is not None:
            last_iter, last_time = self._last_write
            if iteration > last_iter:
                seconds_per_iter = (time.perf_counter() - last_time) / (iteration - last_iter)
        self._last_write = (iteration, time.perf_counter())
        if seconds_per_iter is None:
            return "N/A"
        eta_seconds = seconds_per_iter * max(remaining, 0)
        storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
        return _format_eta(eta_seconds)

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._last_printed_iter:
            return  # e.g. the final write at the end of training, right after the last step's
        self._last_printed_iter = iteration
        eta = self._eta(storage, iteration)
        histories = storage.histories()

        def median(name: str) -> str | None:
            if name not in histories:
                return None
            return f"{histories[name].median(self._window_size):.4f}"

        losses = "  ".join(
            f"{name}: {history.median(self._window_size):.4g}"
            for name, history in histories.items()
            if "loss" in name
        )
        parts = [f"eta: {eta}", f"iter: {iteration}", losses]
        extra = {k: v for k, v in histories.items() if k == "complexity_ratio"}
        for name, history in extra.items():
            parts.append(f"{name}: {history.median(self._window_size):.4f}")
        for name in ("time", "data_time"):
            value = median(name)
            if value is not None:
                parts.append(f"{name}: {value}")
        if "lr" in histories:
            parts.append(f"lr: {histories['lr'].latest():.5g}")
        if torch.cuda.is_available():
            max_mem_mb = torch.cuda.max_memory_allocated() / 1024.0 / 1024.0
            parts.append(f"max_mem: {max_mem_mb:.0f}M")
        self._logger.info("  ".join(p for p in parts if p))


class JSONWriter(EventWriter):
    """Append the scalars recorded since the last write to a JSON-lines file.

    Each line is one object ``{"iteration": i, name: value, ...}`` holding the (smoothed) values
    recorded at iteration ``i``. When ``start_iter`` > 0 (a resumed run), lines of iterations
    ``>= start_iter`` left by the interrupted run are dropped first (atomic rewrite), so the file
    holds each iteration once.
    """

    def __init__(self, json_file: str, window_size: int = 20, start_iter: int = 0) -> None:
        self._path = json_file
        self._window_size = window_size
        self._last_written: dict[str, int] = {}
        os.makedirs(os.path.dirname(os.path.abspath(json_file)), exist_ok=True)
        if start_iter > 0 and os.path.exists(json_file):
            self._truncate_after(start_iter)
        self._file = open(json_file, "a", encoding="utf-8")

    def _truncate_after(self, start_iter: int) -> None:
        kept = []
        with open(self._path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill: drop it
                if isinstance(record, dict) and record.get("iteration", -1) < start_iter:
                    kept.append(line if line.endswith("\n") else line + "\n")
        atomic_write(self._path, "".join(kept))

    def write(self) -> None:
        storage = get_event_storage()
        by_iter: dict[int, dict[str, float]] = {}
        for name, (value, iteration) in storage.latest_with_smoothing_hint(
            self._window_size
        ).items():
            if iteration <= self._last_written.get(name, -1):
                continue
            by_iter.setdefault(iteration, {})[name] = value
            self._last_written[name] = iteration
        for iteration in sorted(by_iter):
            self._file.write(json.dumps({"iteration": iteration, **by_iter[iteration]}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorboardXWriter(EventWriter):
    """Write the scalars recorded since the last write to TensorBoard event files in ``log_dir``.

    This covers the losses, ``lr``, ``time``, ``data_time`` and, for dynamic heads,
    ``complexity_ratio``; smoothed scalars are written as their median over the window. With
    ``start_iter`` > 0 (a resumed run) the events of iterations ``>= start_iter`` written by the
    interrupted run are purged.
    """

    def __init__(
        self, log_dir: str, window_size: int = 20, start_iter: int = 0, **kwargs: Any
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._window_size = window_size
        if start_iter > 0:
            # A resumed run: TensorBoard hides what the interrupted run logged from here on.
            kwargs.setdefault("purge_step", start_iter)
        self._writer = SummaryWriter(log_dir, **kwargs)
        self._last_written: dict[str, int] = {}

    def write(self) -> None:
        storage = get_event_storage()
        for name, (value, iteration) in storage.latest_with_smoothing_hint(
            self._window_size
        ).items():
            if iteration > self._last_written.get(name, -1):
                self._writer.add_scalar(name, value, iteration)
                self._last_written[name] = iteration
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
