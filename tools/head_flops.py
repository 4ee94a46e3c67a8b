#!/usr/bin/env python
"""Print the full (every position computed) cost of an experiment's head: the FCOS head, or for
Faster R-CNN the RPN head (``model.head``).

    python tools/head_flops.py cvpods_playground/fcos.res50.1x.fix.d8 --size 800 1333
    python tools/head_flops.py cvpods_playground/faster_rcnn.res50.fpn.1x.fix_rpn.d4

GFLOPs are multiply-accumulates / 2**30, the unit of the paper's tables. Unit costs are the
official release's: 3x3 conv MACs plus one per channel for each GroupNorm, the scale-fusion units
counted as ``2 * C * 9 + C``; the input is padded to the backbone's size divisibility (32) first.
Predictors and gate convs are not counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "experiments", nargs="+", type=Path, help="experiment folders (config.py + net.py)"
    )
    parser.add_argument("--size", nargs=2, type=int, default=(800, 1333), metavar=("H", "W"))
    args = parser.parse_args(argv)

    from cvpods.engine.launcher import ExperimentError, load_experiment
    from cvpods.modeling.meta_arch.head_complexity import (
        MACS_PER_GFLOP,
        head_full_cost,
        level_sizes,
    )

    for folder in args.experiments:
        try:
            cfg, build_model = load_experiment(str(folder))
        except ExperimentError as error:
            sys.exit(f"head_flops: {error}")
        cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
        model = build_model(cfg)
        divisibility = model.backbone.size_divisibility
        sizes = level_sizes(tuple(args.size), divisibility, model.head.fpn_strides)
        macs = head_full_cost(model.head, tuple(args.size), divisibility)
        print(
            f"{folder.name}: {type(model.head).__name__}, input {args.size[0]}x{args.size[1]} "
            f"(levels {' '.join(f'{h}x{w}' for h, w in sizes)}): {macs / MACS_PER_GFLOP:.2f} GFLOPs "
            f"({macs:.4g} MACs)"
        )


if __name__ == "__main__":
    main()
