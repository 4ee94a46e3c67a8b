#!/usr/bin/env python
"""float32 against bfloat16 eval time of whole detectors, side by side in one process.

The models of the official experiments ``fcos.res50.1x``, ``fcos.res50.1x.fix.d8`` and
``fcos.res50.1x.dynamic.d8.lambda-0_1`` (ResNet-50 + FPN, random weights; eval mode) each run on
one ``--size`` image, once as float32 and once with ``MODEL.INFERENCE_DTYPE`` bfloat16 (the
network parts under ``torch.autocast``: see ``cvpods/engine/precision.py``), interleaved. The
dynamic head's spatial gates are forced to object-like 0/1 maps of each ``--densities`` value,
with the forward hooks and masks of ``tools/benchmark_head.py`` (imported, not copied). Every
time is the median of ``--repeats`` rounds after one warm-up; bfloat16 is timed whether or not
the CPU has native bfloat16 (the first line says whether it has; without it bfloat16 is
emulated and slower than float32).

AP in both precisions is measured with the launcher on a trained experiment::

    cd cvpods_playground/shapes.res18.dynamic.d4.lambda-0_1
    cvpods_test OUTPUT_DIR /tmp/ap.fp32 MODEL.WEIGHTS log/model_final.pth
    cvpods_test OUTPUT_DIR /tmp/ap.bf16 MODEL.WEIGHTS log/model_final.pth --bf16   # --bf16-force
                                                                   # on a CPU without native bf16

Examples::

    python tools/benchmark_bf16.py --threads 1 --clock cpu            # 800x1333, slow
    python tools/benchmark_bf16.py --threads 1 --clock cpu --size 320 544 --repeats 1
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cvpods.engine.precision import apply_inference_dtype, cpu_has_native_bf16
from cvpods.modeling.meta_arch.head_complexity import level_sizes

TOOLS = Path(__file__).resolve().parent
PLAYGROUND = TOOLS.parent / "cvpods_playground"
EXPERIMENTS = (
    "fcos.res50.1x",
    "fcos.res50.1x.fix.d8",
    "fcos.res50.1x.dynamic.d8.lambda-0_1",
)
TARGET = 0.6  # issue 17: bfloat16 time <= 0.6 x float32 time


def _benchmark_head():
    """tools/benchmark_head.py as a module (its ForcedGates hooks and mask generator)."""
    spec = importlib.util.spec_from_file_location("benchmark_head", TOOLS / "benchmark_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(name: str) -> nn.Module:
    from cvpods.engine.launcher import load_experiment

    cfg, build = load_experiment(str(PLAYGROUND / name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return build(cfg).eval()


def in_precision(model: nn.Module, dtype: torch.dtype, call: Callable[[], object]):
    """``call`` with ``model``'s network parts in ``dtype`` (undone after each call)."""

    def run() -> object:
        handle = apply_inference_dtype(model, dtype, "cpu")
        try:
            return call()
        finally:
            handle.remove()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        default="cpu",
        choices=["cpu", "wall"],
        help="cpu: CPU time of this thread (needs --threads 1; robust on busy cores); wall",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", nargs=2, type=int, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.25, 0.5])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1")
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    bench_head = _benchmark_head()
    masked_conv_bench = bench_head._masked_conv_benchmark()
    time_interleaved, make_mask = masked_conv_bench.time_interleaved, masked_conv_bench.object_mask
    h, w = args.size
    print(
        f"# torch {torch.__version__}, native bfloat16 on this CPU: {cpu_has_native_bf16()}, "
        f"{args.threads} thread(s), clock: {args.clock}, image {h}x{w}, "
        f"median of {args.repeats}"
    )
    print(f"| experiment | gate density | float32 ms | bfloat16 ms | bf16 / fp32 | ≤ {TARGET} |")
    print("|---|---:|---:|---:|---:|:-:|")
    torch.manual_seed(args.seed)
    image = (torch.rand(3, h, w) * 255).to(torch.uint8)
    batch = [{"image": image, "height": h, "width": w}]
    for name in args.experiments:
        model = build_model(name)
        gates = None
        if any(isinstance(m, bench_head.SpatialGate) for m in model.modules()):
            gates = bench_head.ForcedGates(model.head)
        sizes = level_sizes((h, w), model.backbone.size_divisibility, model.head.fpn_strides)
        densities = args.densities if gates is not None else [None]

        def call(m=model) -> object:
            with torch.no_grad():
                return m(batch)

        for density in densities:
            if gates is not None:
                gates.set_density(density, sizes, make_mask, args.seed)
            ms = time_interleaved(
                {
                    "fp32": call,
                    "bf16": in_precision(model, torch.bfloat16, call),
                },
                args.repeats,
                clock,
            )
            ratio = ms["bf16"] / ms["fp32"]
            shown = "-" if density is None else f"{density:.2f}"
            print(
                f"| `{name}` | {shown} | {ms['fp32']:.0f} | {ms['bf16']:.0f} | {ratio:.2f} | "
                f"{'yes' if ratio <= TARGET else 'no'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
