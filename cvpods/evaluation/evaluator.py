"""The evaluator interface and the inference loop that feeds it."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..utils import comm

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_context",
    "inference_on_dataset",
]


class DatasetEvaluator:
    """Accumulates a model's outputs over a dataset and computes metrics at the end.

    ``reset()`` starts over, ``process(inputs, outputs)`` takes one batch (the loader's list of
    dicts and the model's list of outputs), ``evaluate()`` returns ``{task: {metric: value}}`` on
    the main process (and may return ``{}`` or None on the others).
    """

    def reset(self) -> None:
        """Forget everything processed so far (called before an evaluation)."""

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Take one batch: ``inputs`` as the test loader gives them (one dict per image, with
        ``image_id``, ``height``, ``width``), ``outputs`` the model's (one dict per image, e.g.
        ``{"instances": Instances, "head_cost": GateCost}``)."""
        raise NotImplementedError

    def evaluate(self) -> dict | None:
        """The metrics over every processed batch: ``{task: {metric: value}}``."""
        raise NotImplementedError


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run side by side; their results are merged (task names must differ)."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        """Reset every evaluator."""
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Give the batch to every evaluator."""
        for evaluator in self.evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> dict:
        """The union of the evaluators' results; a KeyError if two report the same task."""
        results: dict = {}
        for evaluator in self.evaluators:
            for task, value in (evaluator.evaluate() or {}).items():
                if task in results:
                    raise KeyError(f"two evaluators both produced results for task {task!r}")
                results[task] = value
        return results


@contextlib.contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the duration, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def inference_on_dataset(
    model: nn.Module, data_loader: Iterable[list[dict]], evaluator: DatasetEvaluator | None
) -> dict:
    """Run ``model`` on every batch of ``data_loader`` (eval mode, no grad) and evaluate.

    Shows a progress bar on the main process and logs the time per image. The evaluator sees
    every output value, e.g. a gated head's ``"head_cost"`` (see
    :class:`~cvpods.evaluation.HeadComplexityEvaluator`).

    Args:
        model: called on each batch (a list of dicts); returns one dict per image.
        data_loader: yields batches.
        evaluator: reset first, then fed every batch; None: only run the model.

    Returns:
        the evaluator's results (``{}`` without an evaluator; COCO metrics only on the main
        process, the head complexity on every process).
    """
    world_size = comm.get_world_size()
    try:
        total = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if evaluator is not None:
        evaluator.reset()

    num_warmup = min(5, total - 1) if total else 0
    num_images = 0
    start = time.perf_counter()
    timed_start, timed_images = start, 0
    progress = tqdm(
        data_loader, total=total, desc="inference", disable=not comm.is_main_process(),
        dynamic_ncols=True, leave=False,
    )  # fmt: skip
    with inference_context(model), torch.no_grad():
        for index, inputs in enumerate(progress):
            if index == num_warmup:  # the first iterations are slower (allocation, caches)
                timed_start, timed_images = time.perf_counter(), 0
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if evaluator is not None:
                evaluator.process(inputs, outputs)
            num_images += len(inputs)
            timed_images += len(inputs)
    progress.close()
    end = time.perf_counter()
    total_time = end - start
    per_image = (end - timed_start) / max(timed_images, 1)
    logger.info(
        "Inference on %d images took %s (%.4f s / img per process, %d process(es))",
        num_images,
        str(datetime.timedelta(seconds=int(total_time))),
        per_image,
        world_size,
    )

    return (evaluator.evaluate() if evaluator is not None else None) or {}
