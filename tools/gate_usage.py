#!/usr/bin/env python
"""Where a trained dynamic head computes: for every gated unit, the share of its positions whose
gate is open (non-zero) and the mean gate value, over the first test images.

    python tools/gate_usage.py cvpods_playground/<experiment> [--images 50] [KEY VALUE ...]

The model loads the checkpoint ``cvpods_test`` would evaluate (``MODEL.WEIGHTS path`` among the
overrides, else the run's newest) and runs in eval mode, batch 1, on the CPU over the first
``--images`` images of its first test dataset. Each :class:`~cvpods.layers.SpatialGate` is
counted over all the pyramid levels it runs on: open positions / positions (a gate with G groups
counts each group's map). One Markdown row per unit (module path, kind, share open, mean gate
value), then the head's computed share of its full cost on the same images. A unit at 0 % is never
computed, one at 100 % everywhere; when every unit is near one or the other, the gates chose the
head's depth rather than where in the image to compute. A mean gate value of 1.000 means the gate
is saturated at every position: GeReTanH is flat there, so the budget loss, whose gradient on a
gate is the activation's slope times its weight, no longer moves it.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

KINDS = {"depth_module": "depth cell", "dynamic_convs": "fusion unit"}


def unit_kind(name: str) -> str:
    """``depth cell`` / ``fusion unit`` / ``gate`` from a gate's module path."""
    for part, kind in KINDS.items():
        if f".{part}." in f".{name}.":
            return kind
    return "gate"


@dataclass(frozen=True)
class UnitUsage:
    """One gated unit over the counted images: ``computed``, the share of its gate values that
    are non-zero (positions computed); ``mean_gate``, the mean of its gate values (0 to 1)."""

    computed: float
    mean_gate: float


class GateCounter:
    """Counts, per :class:`~cvpods.layers.SpatialGate` of ``model``, open and total gate values
    and their sum, over every forward pass while it is active (forward hooks; safe with the towers
    on two threads)."""

    def __init__(self, model: nn.Module) -> None:
        from cvpods.layers import SpatialGate

        self.open: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.value_sum: dict[str, float] = {}
        self._lock = threading.Lock()
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, SpatialGate):
                self.open[name] = self.total[name] = 0
                self.value_sum[name] = 0.0
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def count(module: nn.Module, inputs, gate: torch.Tensor) -> None:
            opened = int(torch.count_nonzero(gate.detach()))
            value_sum = float(gate.detach().sum(dtype=torch.float64))
            with self._lock:
                self.open[name] += opened
                self.total[name] += gate.numel()
                self.value_sum[name] += value_sum

        return count

    def usage(self) -> dict[str, UnitUsage]:
        """Per gate module path, its :class:`UnitUsage` (NaN fields for a gate that never ran)."""
        nan = float("nan")
        return {
            name: UnitUsage(
                computed=self.open[name] / self.total[name] if self.total[name] else nan,
                mean_gate=self.value_sum[name] / self.total[name] if self.total[name] else nan,
            )
            for name in self.open
        }

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def gate_usage(
    model: nn.Module, batches: Iterable[list[dict]], images: int
) -> tuple[dict[str, UnitUsage], float | None]:
    """``(usage, used_fraction)`` over the first ``images`` batches of ``batches``: each gate's
    :class:`UnitUsage` and the head's used / full cost summed over those images (None when the
    outputs carry no ``head_cost``)."""
    counter = GateCounter(model)
    used = full = 0.0
    try:
        with torch.no_grad():
            for index, inputs in enumerate(batches):
                if index >= images:
                    break
                for output in model(inputs):
                    cost = output.get("head_cost")
                    if cost is not None:
                        used += float(cost.used)
                        full += float(cost.full)
    finally:
        counter.close()
    return counter.usage(), (used / full if full else None)


def table(usage: dict[str, UnitUsage], used_fraction: float | None) -> str:
    lines = [
        "| gated unit | kind | positions computed | mean gate value |",
        "| --- | --- | ---: | ---: |",
    ]
    for name, unit in usage.items():
        lines.append(
            f"| `{name}` | {unit_kind(name)} | {100 * unit.computed:.1f} % | {unit.mean_gate:.3f} |"
        )
    if used_fraction is not None:
        lines.append(f"\nhead cost computed: {100 * used_fraction:.1f} % of its full cost")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gate_usage.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", type=Path, help="trained experiment folder")
    parser.add_argument("--images", type=int, default=50, help="test images (default: 50)")
    parser.add_argument("opts", nargs="*", default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_intermixed_args(argv)  # options may come before or after the overrides
    if len(args.opts) % 2:
        parser.error(f"config overrides come as KEY VALUE pairs; got {args.opts}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from cvpods.checkpoint import DetectionCheckpointer
    from cvpods.engine import DefaultTrainer
    from cvpods.engine.launcher import (
        ExperimentError,
        find_weights_to_test,
        load_experiment,
        prepare_config,
    )
    from cvpods.layers import SpatialGate

    folder = args.experiment.resolve()
    try:
        cfg, build_model = load_experiment(str(folder))
        overrides = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", 0, *args.opts]
        prepare_config(cfg, str(folder), overrides)
        model = build_model(cfg).eval()
        if not any(isinstance(m, SpatialGate) for m in model.modules()):
            raise ExperimentError(f"{folder.name}: the model has no spatial gates")
        weights = find_weights_to_test(cfg, str(folder), args.opts)
    except ExperimentError as error:
        print(f"gate_usage.py: {error}", file=sys.stderr)
        return 2
    DetectionCheckpointer(model, save_to_disk=False).load(weights, checkpointables=[])
    loader = DefaultTrainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
    usage, used_fraction = gate_usage(model, loader, args.images)
    print(f"{folder.name} ({weights}), first {args.images} images of {cfg.DATASETS.TEST[0]}")
    print(table(usage, used_fraction))
    return 0


if __name__ == "__main__":
    sys.exit(main())
