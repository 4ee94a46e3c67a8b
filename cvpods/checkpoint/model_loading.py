"""Putting a state dict into a model: key alignment, shape checks and a readable report.

Checkpoint names often differ from the model's by a leading prefix: ImageNet backbone weights
(``res2.0.conv1.weight``) go into a detector whose backbone lives at ``backbone.bottom_up.``; a
checkpoint written from a ``DistributedDataParallel`` wrapper has ``module.`` in front. Instead of
hard-coding such prefixes, :func:`align_to_model` tries every prefix that turns a checkpoint key
into a model key (by matching the checkpoint key as a dot-separated suffix of a model key, or the
other way around) and keeps the one under which the most keys match.

:func:`load_into_model` then loads the matching tensors, skips shape mismatches (e.g. a classifier
trained for another number of classes) with a warning, and logs one table of what was missing,
unexpected or skipped. :func:`check_enough_matched` turns a load that fits too little of the model
(a checkpoint of another architecture) into a :class:`WeightsMismatchError` with a table per module
of what matched; evaluation and the demo call it, training from a backbone-only file does not.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "DEFAULT_MIN_MATCHED_FRACTION",
    "LoadReport",
    "WeightsMismatchError",
    "align_to_model",
    "check_enough_matched",
    "format_table",
    "group_keys",
    "load_into_model",
]

#: The share of a model's tensors a checkpoint must fill (right name and shape) for evaluation
#: (MODEL.WEIGHTS_MIN_MATCHED_FRACTION overrides it).
DEFAULT_MIN_MATCHED_FRACTION = 0.5


class WeightsMismatchError(ValueError):
    """A weights file fills too little of the model (most tensors missing or mis-shaped)."""


logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ alignment


def _prefix_counts_to_add(
    ckpt_keys: Iterable[str], model_keys: Iterable[str]
) -> collections.Counter:
    """How many checkpoint keys become model keys when each candidate prefix is put in front."""
    prefixes_by_suffix: dict[str, list[str]] = collections.defaultdict(list)
    for key in model_keys:
        for i, char in enumerate(key):
            if char == ".":
                prefixes_by_suffix[key[i + 1 :]].append(key[: i + 1])
    counts: collections.Counter = collections.Counter()
    for key in ckpt_keys:
        for prefix in prefixes_by_suffix.get(key, ()):
            counts[prefix] += 1
    return counts


def _prefix_counts_to_strip(ckpt_keys: Iterable[str], model_keys: set[str]) -> collections.Counter:
    """How many checkpoint keys become model keys when each of their leading prefixes is removed."""
    counts: collections.Counter = collections.Counter()
    for key in ckpt_keys:
        for i, char in enumerate(key):
            if char == "." and key[i + 1 :] in model_keys:
                counts[key[: i + 1]] += 1
    return counts


def align_to_model(
    state_dict: Mapping[str, torch.Tensor], model_keys: Iterable[str]
) -> tuple[dict[str, torch.Tensor], str]:
    """``state_dict`` renamed so that its keys line up with ``model_keys``; and what was done.

    The renaming is a single prefix added to (or removed from) every key that carries it, chosen as
    the one under which the most keys match a model key; names are kept when no prefix does better
    than the names as they are. Returns the renamed dict and a short description ("" if unchanged).
    """
    model_keys = set(model_keys)
    keys = list(state_dict)
    unchanged = sum(k in model_keys for k in keys)
    best = ("", "", unchanged)  # (operation, prefix, matches)
    for prefix, n in _prefix_counts_to_add(keys, model_keys).items():
        if n > best[2] or (n == best[2] and best[0] == "add" and len(prefix) < len(best[1])):
            best = ("add", prefix, n)
    for prefix, n in _prefix_counts_to_strip(keys, model_keys).items():
        if n > best[2]:
            best = ("strip", prefix, n)
    operation, prefix, _ = best
    if operation == "add":
        renamed = {
            (prefix + k if prefix + k in model_keys else k): v for k, v in state_dict.items()
        }
        return renamed, f"added the prefix '{prefix}' to the checkpoint's keys"
    if operation == "strip":
        renamed = {}
        for key, value in state_dict.items():
            short = key[len(prefix) :] if key.startswith(prefix) else key
            renamed[short if short in model_keys else key] = value
        return renamed, f"removed the prefix '{prefix}' from the checkpoint's keys"
    return dict(state_dict), ""


# ------------------------------------------------------------------------------------ report


def group_keys(keys: Iterable[str], max_groups: int = 12) -> list[str]:
    """Compact names for a set of keys: siblings share a line, large subtrees become one line.

    ``["a.b.weight", "a.b.bias", "c.weight"]`` -> ``["a.b.{bias, weight}", "c.weight"]``. While
    there are more than ``max_groups`` lines, the deepest module holding several lines is
    summarised as ``"module.*  (N keys)"``, so detail is kept where it fits.
    """
    leaves: dict[str, list[str]] = collections.defaultdict(list)
    # line node -> (text, number of keys); a top-level key is its own node ("\0": not a parent).
    lines: dict[str, tuple[str, int]] = {}
    for key in sorted(set(keys)):
        parent, _, leaf = key.rpartition(".")
        if parent:
            leaves[parent].append(leaf)
        else:
            lines[key + "\0"] = (key, 1)
    for node, names in leaves.items():
        text = names[0] if len(names) == 1 else "{" + ", ".join(names) + "}"
        lines[node] = (f"{node}.{text}", len(names))
    while len(lines) > max_groups:
        holders: collections.Counter = collections.Counter()
        for node in lines:
            parts = node.split(".")
            for depth in range(1, len(parts)):
                holders[".".join(parts[:depth])] += 1
        candidates = [p for p, n in holders.items() if n >= 2]
        if not candidates:
            break
        module = max(candidates, key=lambda p: (p.count("."), holders[p], p))
        inside = [n for n in lines if n.startswith(module + ".")]
        total = sum(lines.pop(n)[1] for n in inside)
        lines[module] = (f"{module}.*  ({total} keys)", total)
    return [lines[node][0] for node in sorted(lines)]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with a header rule; columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


@dataclass
class LoadReport:
    """The outcome of :func:`load_into_model` (all key names are model-side names where known)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # key -> (checkpoint shape, model shape)
    shape_mismatch: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    renaming: str = ""

    @property
    def complete(self) -> bool:
        """Every model tensor was loaded and every checkpoint tensor was used."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    @property
    def num_model_tensors(self) -> int:
        """Tensors of the model (``num_batches_tracked`` counters not counted)."""
        return len(self.loaded) + len(self.missing) + len(self.shape_mismatch)

    @property
    def matched_fraction(self) -> float:
        """The share of the model's tensors that were loaded (1.0 for a model without any)."""
        total = self.num_model_tensors
        return len(self.loaded) / total if total else 1.0

    def module_table(self) -> str:
        """Per module (one or two name levels), how many model tensors were loaded, were missing
        from the file or had another shape there; plus the file's unused tensors."""
        status = {k: "loaded" for k in self.loaded}
        status.update({k: "missing" for k in self.missing})
        status.update({k: "wrong shape" for k in self.shape_mismatch})
        depth = 2
        while depth > 1 and len({_module_of(k, depth) for k in status}) > 12:
            depth -= 1
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for key, state in status.items():
            counts[_module_of(key, depth)][state] += 1
        rows = [
            [
                module,
                str(sum(c.values())),
                str(c["loaded"]),
                str(c["missing"]),
                str(c["wrong shape"]),
            ]
            for module, c in sorted(counts.items())
        ]
        rows.append(
            [
                "total",
                str(self.num_model_tensors),
                str(len(self.loaded)),
                str(len(self.missing)),
                str(len(self.shape_mismatch)),
            ]
        )
        table = format_table(
            ["module", "tensors", "loaded", "missing in file", "wrong shape"], rows
        )
        if self.unexpected:
            table += f"\n(and {len(self.unexpected)} tensor(s) of the file match no model tensor)"
        return table

    def table(self) -> str:
        """One table of missing, unexpected and shape-mismatched keys (grouped by prefix)."""
        rows = [
            ["skipped: shape mismatch", key, _shape(ckpt), _shape(model)]
            for key, (ckpt, model) in sorted(self.shape_mismatch.items())
        ]
        rows += [["missing in checkpoint", name, "", ""] for name in group_keys(self.missing)]
        rows += [["unused from checkpoint", name, "", ""] for name in group_keys(self.unexpected)]
        if not rows:
            return ""
        return format_table(["status", "keys", "checkpoint shape", "model shape"], rows)


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def _module_of(key: str, depth: int) -> str:
    """The first ``depth`` name levels of a parameter's module (``backbone.bottom_up``)."""
    parts = key.split(".")[:-1] or [key]
    return ".".join(parts[:depth])


def check_enough_matched(
    report: LoadReport, source: str, min_fraction: float = DEFAULT_MIN_MATCHED_FRACTION
) -> None:
    """Raise :class:`WeightsMismatchError` if ``report`` loaded less than ``min_fraction`` of the
    model's tensors; the message holds :meth:`LoadReport.module_table`.

    Args:
        report: the outcome of loading ``source``.
        source: the weights file (for the message).
        min_fraction: in [0, 1]; 0 accepts anything.
    """
    if not 0.0 <= float(min_fraction) <= 1.0:
        raise ValueError(
            f"MODEL.WEIGHTS_MIN_MATCHED_FRACTION must be in [0, 1], got {min_fraction!r}"
        )
    if report.matched_fraction >= float(min_fraction):
        return
    raise WeightsMismatchError(
        f"{source} does not fit this model: only {len(report.loaded)} of "
        f"{report.num_model_tensors} model tensors ({report.matched_fraction:.0%}) were found in "
        f"it with the right name and shape; evaluating needs at least {float(min_fraction):.0%} "
        "(MODEL.WEIGHTS_MIN_MATCHED_FRACTION). Is it a checkpoint of another architecture or "
        f"config?\n{report.module_table()}"
    )


# ------------------------------------------------------------------------------------ loading

# Counters of torch BatchNorm layers; meaningless for FrozenBN / GN models, so never reported.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def load_into_model(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    renaming: str | None = None,
) -> LoadReport:
    """Load what fits of ``state_dict`` into ``model`` and log a report table.

    Keys are first aligned with :func:`align_to_model`, unless ``renaming`` is given (the caller
    already aligned them; the string describes how, for the log). Tensors whose shape differs from
    the model's are skipped with a warning (the model keeps its initialisation). Never raises for
    missing, unexpected or mis-shaped keys; a non-tensor value raises ``TypeError`` naming the key.
    """
    target = model.state_dict()
    if renaming is None:
        aligned, renaming = align_to_model(state_dict, target.keys())
    else:
        aligned = dict(state_dict)
    report = LoadReport(renaming=renaming)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in aligned.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{source}: entry {key!r} is a {type(value).__name__}, expected a tensor or array"
            )
        if key not in target:
            if not key.endswith(_IGNORED_SUFFIXES):
                report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            report.shape_mismatch[key] = (tuple(value.shape), tuple(target[key].shape))
            continue
        to_load[key] = value
    report.loaded = sorted(to_load)
    report.missing = sorted(
        k
        for k in target
        if k not in to_load and k not in report.shape_mismatch and not k.endswith(_IGNORED_SUFFIXES)
    )
    model.load_state_dict(to_load, strict=False)
    _log_report(report, source, len(target))
    return report


def _log_report(report: LoadReport, source: str, num_model_keys: int) -> None:
    summary = f"Loaded {len(report.loaded)} of {num_model_keys} model tensors from {source}"
    if report.renaming:
        summary += f" ({report.renaming})"
    if report.shape_mismatch:
        logger.warning(
            "%s: skipped %d tensor(s) whose shape differs from the model's (e.g. a classifier "
            "trained for another number of classes); they keep their initial values: %s",
            source,
            len(report.shape_mismatch),
            ", ".join(group_keys(report.shape_mismatch)),
        )
    table = report.table()
    if table:
        logger.warning("%s.\n%s", summary, table)
        logger.info("What %s filled, per module:\n%s", source, report.module_table())
    else:
        logger.info("%s; all keys matched.", summary)
