"""Printing evaluation results, and turning them into strict JSON."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["NULL_REASONS_KEY", "print_csv_format", "strict_json_results"]

#: The entry of ``results.json`` that says why each null value is null.
NULL_REASONS_KEY = "null_reasons"
_AREA_RANGES = {"APs": "small (area < 32^2)", "APm": "medium", "APl": "large (area > 96^2)"}


def _null_reason(path: list[str]) -> str:
    """Why the metric at ``path`` (``["bbox", "APs"]``) has no value."""
    task, metric = path[0], path[-1]
    if task == "head_complexity":
        return "no image was evaluated"
    if metric in _AREA_RANGES:
        return f"no {_AREA_RANGES[metric]} ground-truth box among the evaluated images"
    if metric.startswith("AP-"):
        return f"no ground-truth box of class {metric[3:]!r} among the evaluated images"
    if metric.startswith("AP"):
        return "no ground-truth box among the evaluated images"
    return "the value was not a finite number"


def strict_json_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` with every NaN / infinity replaced by ``None`` (JSON ``null``).

    A ``"null_reasons"`` entry maps each replaced value's path (``"bbox/APs"``) to the reason,
    e.g. "no small (area < 32^2) ground-truth box among the evaluated images". The result
    serialises with ``json.dumps(..., allow_nan=False)``.
    """
    reasons: dict[str, str] = {}

    def clean(value: Any, path: list[str]) -> Any:
        if isinstance(value, Mapping):
            return {str(k): clean(v, [*path, str(k)]) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, [*path, str(i)]) for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            reasons["/".join(path)] = _null_reason(path)
            return None
        return value

    cleaned = clean(results, [])
    if reasons:
        cleaned[NULL_REASONS_KEY] = reasons
    return cleaned


def print_csv_format(results: Mapping[str, Mapping[str, float]]) -> str:
    """Log each task's main metrics as two comma-separated lines (names, values); return the text.

    Per-category entries (``"AP-<class>"``) are left out; they are in the evaluator's tables.
    """
    lines = []
    for task, metrics in results.items():
        if task == NULL_REASONS_KEY:
            continue
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
