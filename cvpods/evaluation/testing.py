"""Printing evaluation results."""

from __future__ import annotations

import logging
from collections.abc import Mapping

logger = logging.getLogger(__name__)

__all__ = ["print_csv_format"]


def print_csv_format(results: Mapping[str, Mapping[str, float]]) -> str:
    """Log each task's main metrics as two comma-separated lines (names, values); return the text.

    Per-category entries (``"AP-<class>"``) are left out; they are in the evaluator's tables.
    """
    lines = []
    for task, metrics in results.items():
        if not isinstance(metrics, Mapping):
            lines.append(f"copypaste: {task}={metrics}")
            continue
        main = {k: v for k, v in metrics.items() if "-" not in k}
        lines.append(f"copypaste: Task: {task}")
        lines.append("copypaste: " + ",".join(main))
        lines.append("copypaste: " + ",".join(_format(v) for v in main.values()))
    text = "\n".join(lines)
    for line in lines:
        logger.info(line)
    return text


def _format(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)
