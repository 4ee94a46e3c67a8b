"""Running two independent inference computations side by side on the CPU.

A deep FCOS head has two towers (classification and box) that read the same features and share
nothing until the predictors. On the CPU, the sparse inference path of the dynamic head is many
small operators (gate convolutions, cost sums, masked convolutions of a few dozen rows on the
coarse levels) that gain little from intra-op threads; giving each tower its own share of the
threads, one tower on a helper thread, keeps every core busy instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

A = TypeVar("A")
B = TypeVar("B")


def can_run_side_by_side(example: torch.Tensor) -> bool:
    """Whether :func:`run_side_by_side` applies to computations on tensors like ``example``.

    Only for plain CPU inference with at least two intra-op threads: gradients off (a helper
    thread would not record into this thread's autograd graph the same way), no autocast (its
    state is per thread), not while tracing or compiling (a graph must see one thread).
    """
    return (
        not torch.compiler.is_compiling()
        and isinstance(example, torch.Tensor)
        and not isinstance(example, torch.fx.Proxy)
        and example.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and torch.get_num_threads() >= 2
    )


def run_side_by_side(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """``(first(), second())``, ``second`` on a helper thread, each with half of the intra-op
    threads (at least one).

    This thread's intra-op thread count is restored afterwards; an exception in either is
    raised here (``first``'s first). Call it only where :func:`can_run_side_by_side` holds.
    """
    threads = torch.get_num_threads()
    share = max(1, threads // 2)
    inference = torch.is_inference_mode_enabled()
    outcome: dict[str, object] = {}

    def helper() -> None:
        try:
            torch.set_num_threads(share)
            with torch.inference_mode(inference), torch.no_grad():
                outcome["value"] = second()
        except BaseException as error:  # handed to the calling thread
            outcome["error"] = error

    worker = threading.Thread(target=helper, name="cvpods-side-by-side", daemon=True)
    torch.set_num_threads(share)
    try:
        worker.start()
        try:
            value = first()
        finally:
            worker.join()
    finally:
        torch.set_num_threads(threads)
    if "error" in outcome:
        raise outcome["error"]
    return value, outcome["value"]
