#!/usr/bin/env python
"""Time the dynamic head against the fixed head it replaces, side by side in one process.

**Forced gates** (default). The heads of the official experiments (256 channels, D4 and D8:
``fcos.res50.1x.fix.d{4,8}`` against ``fcos.res50.1x.dynamic.d{4,8}.lambda-0_1``) get the same
FPN features of an ``--size`` image (padded to a multiple of 32). Every ``SpatialGate`` of the
dynamic head is replaced, through a forward hook, by a fixed 0/1 map: an object-like mask (union
of random ellipses, seeded) of the requested density on each level. Both heads run in eval mode,
interleaved, and the table gives, per density, the FLOPs ratio (used / full cost, as the head
accounts it) next to the time ratio dynamic / fixed, and the target ``1.15 x FLOPs + 0.05``
(``1.10`` with every gate open). The fixed head is timed in the faster of the NCHW and
channels-last layouts, and the dynamic head gets the same tensors.

**Trained models** (``--trained FOLDER ...``). Whole-model eval time per image on the first
``--images`` images of each experiment's first test dataset, for experiment folders that hold a
trained checkpoint (``OUTPUT_DIR/last_checkpoint``), with the dynamic heads' real gates: e.g. the
embedded-data experiments ``shapes.res18.dynamic.d4.lambda-0_1``, ``shapes.res18.fix.d4`` and
``shapes.res18.fcos`` after ``cvpods_train``. Folders without a checkpoint are listed as skipped
(with ``--static-untrained``, static heads are timed from their initial weights instead).

Examples::

    python tools/benchmark_head.py --threads 1 --clock cpu     # 1 thread, CPU time (the default)
    python tools/benchmark_head.py --threads 2 --clock wall    # 2 threads, wall clock
    python tools/benchmark_head.py --depths 8 --size 400 667 --densities 0.1 0.5   # quicker
    python tools/benchmark_head.py --depths --trained cvpods_playground/shapes.res18.*
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvpods.layers import ShapeSpec, SpatialGate
from cvpods.modeling import FCOSDynamicHead, FCOSFixHead
from cvpods.modeling.meta_arch.head_complexity import level_sizes

TOOLS = Path(__file__).resolve().parent
PLAYGROUND = TOOLS.parent / "cvpods_playground"


def _masked_conv_benchmark():
    """The mask generator and timer of tools/benchmark_masked_conv.py (shared, not copied)."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_masked_conv", TOOLS / "benchmark_masked_conv.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_heads(depth: int, channels: int) -> tuple[FCOSFixHead, FCOSDynamicHead]:
    """The fixed and dynamic heads of the official D``depth`` experiments, in eval mode."""
    from cvpods.engine.launcher import load_experiment

    heads = []
    for name, head_cls in (
        (f"fcos.res50.1x.fix.d{depth}", FCOSFixHead),
        (f"fcos.res50.1x.dynamic.d{depth}.lambda-0_1", FCOSDynamicHead),
    ):
        cfg, _ = load_experiment(str(PLAYGROUND / name))
        shapes = [ShapeSpec(channels=channels, stride=s) for s in cfg.MODEL.FCOS.FPN_STRIDES]
        heads.append(head_cls(cfg, shapes).eval())
    return heads[0], heads[1]


class ForcedGates:
    """Forward hooks that make every spatial gate output a fixed 0/1 map per level size."""

    def __init__(self, head: nn.Module) -> None:
        self.maps: dict[tuple[int, int], torch.Tensor] = {}
        self.handles = [
            m.register_forward_hook(self._hook)
            for m in head.modules()
            if isinstance(m, SpatialGate)
        ]

    def _hook(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        gate = self.maps[tuple(output.shape[-2:])]
        return gate.expand(output.shape[0], output.shape[1], -1, -1)

    def set_density(
        self, density: float, sizes: list[tuple[int, int]], make_mask, seed: int
    ) -> None:
        rng = np.random.default_rng(seed)
        self.maps = {(h, w): make_mask(h, w, density, rng).float()[None, None] for h, w in sizes}


def with_gates(
    gates: ForcedGates, maps: dict[tuple[int, int], torch.Tensor], call: Callable[[], object]
) -> Callable[[], object]:
    """``call`` with the gates forced to ``maps`` (so densities can be timed interleaved)."""

    def forced() -> object:
        gates.maps = maps
        return call()

    return forced


def per_round_range(dynamic: list[float], fixed: list[float]) -> tuple[float, float]:
    """Lowest and highest ratio ``dynamic[i] / fixed[i]`` over the rounds: how much the machine's
    speed moved the ratio while it was measured."""
    ratios = [d / f for d, f in zip(dynamic, fixed)]
    return min(ratios), max(ratios)


def target_ratio(flops_ratio: float, density: float) -> float:
    """The issue's target for time(dynamic) / time(fixed)."""
    return 1.10 if density >= 1.0 else 1.15 * flops_ratio + 0.05


def forced_gate_table(args: argparse.Namespace, clock: Callable[[], float]) -> None:
    bench = _masked_conv_benchmark()
    for depth in args.depths:
        fixed, dynamic = build_heads(depth, args.channels)
        sizes = level_sizes(tuple(args.size), 32, dynamic.fpn_strides)
        torch.manual_seed(args.seed)
        features = [torch.randn(1, args.channels, h, w) for h, w in sizes]
        features_cl = [f.contiguous(memory_format=torch.channels_last) for f in features]
        gates = ForcedGates(dynamic)

        def run(head: nn.Module, inputs: list[torch.Tensor]) -> Callable[[], object]:
            def call() -> object:
                with torch.no_grad():
                    return head(inputs)

            return call

        layouts = bench.time_interleaved(
            {"nchw": run(fixed, features), "channels_last": run(fixed, features_cl)},
            args.repeats,
            clock,
        )
        layout = min(layouts, key=layouts.get)
        inputs = features if layout == "nchw" else features_cl  # the same tensors for both heads
        fns = {"fixed": run(fixed, inputs)}
        flops = {}
        for density in args.densities:
            gates.set_density(density, sizes, bench.object_mask, args.seed)
            cost = run(dynamic, inputs)().cost
            flops[density] = float(cost.used.sum() / cost.full.sum())
            fns[density] = with_gates(gates, dict(gates.maps), run(dynamic, inputs))
        rounds = bench.time_rounds(fns, args.repeats, clock)
        ms = {name: statistics.median(times) for name, times in rounds.items()}
        print(
            f"\nD{depth}: fixed head {ms['fixed']:.0f} ms ({layout} input) vs dynamic head, "
            f"{args.channels} ch, input {args.size[0]}x{args.size[1]} "
            f"(levels {' '.join(f'{h}x{w}' for h, w in sizes)}), {args.threads} thread(s), "
            f"{args.clock} clock, median of {args.repeats}, interleaved; the last column: "
            "lowest and highest ratio of a dynamic call to the fixed call of its round"
        )
        print(
            "| gate density | FLOPs ratio (used/full) | dynamic ms | dynamic / fixed | target "
            "| per-round range |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for density in args.densities:
            ratio = ms[density] / ms["fixed"]
            target = target_ratio(flops[density], density)
            mark = "" if ratio <= target else " (missed)"
            low, high = per_round_range(rounds[density], rounds["fixed"])
            print(
                f"| {density:.2f} | {flops[density]:.3f} | {ms[density]:.0f} | {ratio:.3f} | "
                f"<= {target:.3f}{mark} | {low:.3f}-{high:.3f} |",
                flush=True,
            )
        for handle in gates.handles:
            handle.remove()


def measure_trained(
    folder: Path,
    images: int,
    clock: Callable[[], float],
    static_untrained: bool = False,
    cfg=None,
) -> dict | None:
    """Whole-model eval time per image of the experiment in ``folder``, with its trained weights.

    The model (built from ``cfg``, default the folder's config.py) loads the checkpoint that
    ``cvpods_test`` evaluates and runs, batch 1 and on the CPU, over the first ``images`` + 1
    images of its first test dataset; the first image is a warm-up and not timed. Returns
    ``{"head", "weights", "ms_per_image", "images", "used_gflops", "full_gflops"}`` (the GFLOPs
    averaged over the timed images, ``used_gflops`` None for static heads; ``weights`` None when a
    static head was timed from its initial weights), or None when there is no checkpoint to time.
    """
    from cvpods.checkpoint import DetectionCheckpointer
    from cvpods.engine import DefaultTrainer
    from cvpods.engine.launcher import (
        ExperimentError,
        find_weights_to_test,
        load_experiment,
        prepare_config,
    )
    from cvpods.modeling.meta_arch.head_complexity import MACS_PER_GFLOP, head_full_cost

    folder_cfg, build_model = load_experiment(str(folder))
    cfg = folder_cfg if cfg is None else cfg
    prepare_config(cfg, str(folder), ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", 0])
    model = build_model(cfg).eval()
    try:
        weights = find_weights_to_test(cfg, str(folder), [])
    except ExperimentError:  # no checkpoint yet
        if "Dynamic" in type(model.head).__name__ or not static_untrained:
            return None
        weights = None  # a static head's time does not depend on its weights
    if weights is not None:
        DetectionCheckpointer(model, save_to_disk=False).load(weights, checkpointables=[])
    loader = DefaultTrainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
    times, used, full = [], [], []
    with torch.no_grad():
        for index, inputs in enumerate(loader):
            if index > images:
                break
            start = clock()
            outputs = model(inputs)
            elapsed = (clock() - start) * 1e3
            if index == 0:
                continue
            times.append(elapsed)
            size = tuple(inputs[0]["image"].shape[-2:])
            full.append(
                head_full_cost(model.head, size, model.backbone.size_divisibility) / MACS_PER_GFLOP
            )
            cost = outputs[0].get("head_cost")  # a gated head's cost is a value of its outputs
            if cost is not None:
                used.append(float(cost.used) / MACS_PER_GFLOP)
    return {
        "head": type(model.head).__name__,
        "weights": weights,
        "ms_per_image": float(np.mean(times)) if times else float("nan"),
        "images": len(times),
        "used_gflops": float(np.mean(used)) if used else None,
        "full_gflops": float(np.mean(full)) if full else None,
    }


def trained_table(args: argparse.Namespace, clock: Callable[[], float]) -> None:
    print(
        f"\nTrained models: whole-model eval time per image, first {args.images} test images, "
        f"{args.threads} thread(s), {args.clock} clock (batch 1; the first image is a warm-up)"
    )
    print("| experiment | head | ms / image | head GFLOPs used (avg) | used / full |")
    print("|---|---|---:|---:|---:|")
    for folder in args.trained:
        row = measure_trained(folder, args.images, clock, args.static_untrained)
        if row is None:
            print(f"| {folder.name} | skipped: no checkpoint (train it with cvpods_train) | | | |")
            continue
        head = row["head"] + ("" if row["weights"] else " (initial weights)")
        used, full = row["used_gflops"], row["full_gflops"]
        used_text = f"{used:.3f}" if used is not None else "(dense)"
        ratio_text = f"{used / full:.2f}" if used is not None and full else "-"
        print(
            f"| {folder.name} | {head} | {row['ms_per_image']:.1f} | {used_text} | {ratio_text} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="cpu",
        help="wall-clock time, or this thread's CPU time (robust on shared cores; needs --threads 1)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", nargs=2, type=int, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument(
        "--depths", nargs="*", type=int, default=[4, 8], choices=[4, 8],
        help="head depths of the forced-gate table (none: skip it)",
    )  # fmt: skip
    parser.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--trained", nargs="*", type=Path, default=[],
        help="experiment folders with trained checkpoints: whole-model time per image",
    )  # fmt: skip
    parser.add_argument("--images", type=int, default=50, help="test images per trained model")
    parser.add_argument(
        "--static-untrained",
        action="store_true",
        help="time experiments with static heads (fixed, FCOS) from their initial weights when "
        "they have no checkpoint (their time does not depend on the weights)",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1")
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock")
    forced_gate_table(args, clock)
    if args.trained:
        trained_table(args, clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
