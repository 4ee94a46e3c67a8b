#!/usr/bin/env python
"""Time the dynamic D8 head with its gates forced to a density, against the same head fully open.

Every spatial gate of the head is replaced (through a forward hook) by a fixed 0/1 map: an
object-like mask (union of random ellipses, seeded) of the requested density on each level. The
head then runs in eval mode, i.e. on the sparse inference path (masked convolutions for the depth
cells), and its time is compared with the same head whose gates are all 1 — the dense
computation. Next to the time ratio it prints the FLOPs ratio (used / full head cost, as the head
accounts it: the first conv of each depth cell runs on the 3x3-dilated gate). Example::

    python tools/benchmark_head.py --threads 2 --repeats 3
    python tools/benchmark_head.py --threads 1 --clock cpu          # robust on shared cores
    python tools/benchmark_head.py --size 400 667 --densities 0.1 0.5   # a quicker look
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cvpods.configs import FCOSConfig
from cvpods.layers import ShapeSpec, SpatialGate
from cvpods.modeling import FCOSDynamicHead
from cvpods.modeling.meta_arch.head_complexity import level_sizes

TOOLS = Path(__file__).resolve().parent


def _masked_conv_benchmark():
    """The mask generator and timer of tools/benchmark_masked_conv.py (shared, not copied)."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_masked_conv", TOOLS / "benchmark_masked_conv.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_head(channels: int, num_convs: int) -> FCOSDynamicHead:
    """The D8 head of the official dynamic experiments (GeReTanH gates, tau 1.5)."""
    cfg = FCOSConfig()
    cfg.merge_from_dict(
        {
            "MODEL.FCOS.NUM_CONVS": num_convs,
            "MODEL.FCOS.GATE_ACTIVATION": "GeReTanH",
            "MODEL.FCOS.GATE_ACTIVATION_KARGS": {"tau": 1.5},
            "MODEL.FCOS.CENTERNESS_ON_REG": True,
            "MODEL.FCOS.NORM_REG_TARGETS": True,
        }
    )
    shapes = [ShapeSpec(channels=channels, stride=s) for s in cfg.MODEL.FCOS.FPN_STRIDES]
    return FCOSDynamicHead(cfg, shapes).eval()


class ForcedGates:
    """Forward hooks that make every spatial gate output a fixed 0/1 map per level size."""

    def __init__(self, head: torch.nn.Module) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", nargs=2, type=int, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--num-convs", type=int, default=16, help="16 = D8, 8 = D4")
    parser.add_argument("--densities", nargs="+", type=float, default=[0.05, 0.1, 0.25, 0.5, 0.75])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall-clock time, or this thread's CPU time (robust on shared cores; needs --threads 1)",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1")
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    torch.set_num_threads(args.threads)
    bench = _masked_conv_benchmark()

    head = build_head(args.channels, args.num_convs)
    sizes = level_sizes(tuple(args.size), 32, head.fpn_strides)
    torch.manual_seed(args.seed)
    features = [torch.randn(1, args.channels, h, w) for h, w in sizes]
    gates = ForcedGates(head)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return head(features).cost

    gates.set_density(1.0, sizes, bench.object_mask, args.seed)
    dense_ms = bench.time_interleaved({"dense": run}, args.repeats, clock)["dense"]
    print(
        f"dynamic head, {args.num_convs // 2} stages/branch, {args.channels} ch, input {args.size[0]}x{args.size[1]}"
        f" (levels {' '.join(f'{h}x{w}' for h, w in sizes)}), {args.threads} threads, {args.clock} clock,"
        f" median of {args.repeats}"
    )
    print(f"all gates open (dense): {dense_ms:.0f} ms")
    print("| gate density | FLOPs ratio (used/full) | time ms | time ratio |")
    print("|---:|---:|---:|---:|")
    for density in args.densities:
        gates.set_density(density, sizes, bench.object_mask, args.seed)
        cost = run()
        ms = bench.time_interleaved({"masked": run}, args.repeats, clock)["masked"]
        flops_ratio = float(cost.used.sum() / cost.full.sum())
        print(f"| {density:.2f} | {flops_ratio:.3f} | {ms:.0f} | {ms / dense_ms:.3f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
