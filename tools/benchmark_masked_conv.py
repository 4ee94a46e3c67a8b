#!/usr/bin/env python
"""Benchmark the masked convolution against the best dense convolution, side by side.

For each FPN map size and mask density it times, interleaved and on the same input:

* ``masked``: :func:`cvpods.layers.masked_conv.masked_conv2d` as the dynamic head calls it (the
  dispatcher: sparse kernel below the break-even density, dense + masked epilogue above), on a
  channels-last input, and ``masked NCHW``: the same on an ordinary contiguous input,
* ``sparse``: the sparse kernel forced at every density (the compiled one when available, else the
  pure-PyTorch fallback),
* ``dense``: ``F.conv2d`` + ``F.group_norm`` + ReLU over the whole map, in channels-last and in
  contiguous memory, keeping the faster of the two,

with the head's layer: 256 -> 256 channels, 3x3, no bias, GroupNorm(32) + ReLU. Every number is
the median over ``--repeats`` rounds. Examples::

    python tools/benchmark_masked_conv.py --threads 2 --repeats 7
    python tools/benchmark_masked_conv.py --threads 1 --clock cpu   # robust on shared cores
    python tools/benchmark_masked_conv.py --threads 1 --clock cpu --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cvpods._extension import get_extension
from cvpods.layers.masked_conv import MaskedEpilogue, dense_break_even, masked_conv2d

# P3, P4, P5 feature-map sizes of an 800x1333 input (strides 8, 16, 32).
MAP_SIZES = {"P3": (100, 167), "P4": (50, 84), "P5": (25, 42)}
DENSITIES = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


def object_mask(h: int, w: int, density: float, rng: np.random.Generator) -> torch.Tensor:
    """Union of random axis-aligned ellipses ("objects") grown until ``density`` is reached.

    Returns a bool ``[h, w]`` mask whose active fraction is ``density`` up to the last ellipse's
    overshoot, which is removed by dropping the last-added positions in raster order.
    """
    target = round(density * h * w)
    mask = np.zeros((h, w), dtype=bool)
    if target >= h * w:
        return torch.ones(h, w, dtype=torch.bool)
    ys, xs = np.mgrid[0:h, 0:w]
    while mask.sum() < target:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry = rng.uniform(0.03, 0.18) * h
        rx = ry * rng.uniform(0.5, 2.0) * w / h * 0.6
        blob = ((ys - cy) / ry) ** 2 + ((xs - cx) / max(rx, 1.0)) ** 2 <= 1.0
        new = blob & ~mask
        excess = mask.sum() + new.sum() - target
        if excess > 0:
            flat = np.flatnonzero(new)
            new.flat[flat[len(flat) - excess :]] = False
        mask |= new
    return torch.from_numpy(mask)


def uniform_mask(h: int, w: int, density: float, rng: np.random.Generator) -> torch.Tensor:
    """Exactly ``round(density * h * w)`` positions chosen uniformly at random, bool ``[h, w]``."""
    mask = np.zeros(h * w, dtype=bool)
    mask[rng.permutation(h * w)[: round(density * h * w)]] = True
    return torch.from_numpy(mask.reshape(h, w))


def time_rounds(
    fns: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Milliseconds of each function in each of ``repeats`` rounds (one call of each per round,
    in order), after one warm-up call of each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append((clock() - start) * 1e3)
    return times


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Median milliseconds of each function over :func:`time_rounds`."""
    return {name: statistics.median(ts) for name, ts in time_rounds(fns, repeats, clock).items()}


def dense_fn(x: torch.Tensor, weight: torch.Tensor, gn: torch.nn.GroupNorm) -> Callable[[], object]:
    return lambda: F.relu_(F.group_norm(F.conv2d(x, weight, padding=1), 32, gn.weight, gn.bias))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--sizes", nargs="+", default=list(MAP_SIZES), choices=list(MAP_SIZES))
    parser.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    parser.add_argument(
        "--kinds", nargs="+", default=["object", "uniform"], choices=["object", "uniform"]
    )
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="input, weight and GroupNorm dtype of every path (bfloat16: the break-even of "
        "bfloat16 inference)",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall: elapsed time; cpu: CPU time of the calling thread (needs --threads 1; "
        "insensitive to other processes preempting this one on shared cores)",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    c = args.channels
    weight = torch.randn(c, c, 3, 3) * (2.0 / (9 * c)) ** 0.5
    gn = torch.nn.GroupNorm(32, c)
    torch.nn.init.normal_(gn.weight, 1.0, 0.1)
    torch.nn.init.normal_(gn.bias, 0.0, 0.1)
    dtype = getattr(torch, args.dtype)
    weight = weight.to(dtype)
    gn = gn.to(dtype)
    post = MaskedEpilogue.from_group_norm(gn, relu=True)
    sparse_impl = "sparse" if get_extension() is not None else "torch"
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    print(
        f"# torch {torch.__version__}, {args.threads} threads, extension: "
        f"{get_extension() is not None}, sparse impl: {sparse_impl}, "
        f"dense break-even: "
        f"{dense_break_even(torch.device('cpu'), get_extension() is not None, dtype)}, "
        f"dtype: {args.dtype}, "
        f"repeats: {args.repeats}, clock: {args.clock}"
    )
    print(
        "| map | HxW | mask | density | masked ms | sparse ms | dense ms (best) | masked/dense "
        "| masked NCHW/dense |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        for size in args.sizes:
            h, w = MAP_SIZES[size]
            x = torch.randn(1, c, h, w).to(dtype)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            for kind in args.kinds:
                rng = np.random.default_rng(args.seed)
                for density in args.densities:
                    make = object_mask if kind == "object" else uniform_mask
                    mask = make(h, w, density, rng)[None]
                    fns = {
                        "masked": lambda m=mask, xi=x_cl: masked_conv2d(
                            xi, m, weight, None, 1, post
                        ),
                        "masked_nchw": lambda m=mask, xi=x: masked_conv2d(
                            xi, m, weight, None, 1, post
                        ),
                        "sparse": lambda m=mask, xi=x_cl: masked_conv2d(
                            xi, m, weight, None, 1, post, impl=sparse_impl
                        ),
                        "dense_cl": dense_fn(x_cl, weight, gn),
                        "dense_nchw": dense_fn(x, weight, gn),
                    }
                    ms = time_interleaved(fns, args.repeats, clock)
                    dense = min(ms["dense_cl"], ms["dense_nchw"])
                    actual = mask.float().mean().item()
                    print(
                        f"| {size} | {h}x{w} | {kind} | {actual:.3f} | {ms['masked']:.1f} | "
                        f"{ms['sparse']:.1f} | {dense:.1f} | {ms['masked'] / dense:.2f} | "
                        f"{ms['masked_nchw'] / dense:.2f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
