#!/usr/bin/env python
"""Draw the accuracy / cost trade-off: AP against head GFLOPs and AP against ms per image.

    python tools/plot_results.py docs/results/shapes/*.json --out docs/results/shapes/tradeoff.png
    python tools/plot_results.py cvpods_playground/shapes.res18.* --out tradeoff.png

Each input is a row written by tools/collect_results.py (``.json``) or an experiment folder: its
``OUTPUT_DIR/inference/<dataset>/results.json``, completed by the row
``<--collected>/<experiment>.json`` when that exists (for ``ms_per_image`` and ``full_gflops``).
A dynamic head is placed at its average GFLOPs (``head_complexity``), a static head at its full
cost (computed from the folder's test images when no row gives it). The dynamic heads of one
family (the same name apart from ``.lambda-*``) are joined by a line, as in the paper's
accuracy-FLOPs figure; each point is labelled with its experiment (a dynamic point by its
``lambda-*`` when its line has others). Faster R-CNN rows are placed at their RPN head's GFLOPs
(triangles, "(RPN head)" in the legend), the FCOS rows at their detection head's (circles and
squares). Points without a measured ms per image are left out of the second panel.

Needs matplotlib (``pip install '.[plot]'``); without it the tool says so and exits with 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
MISSING_MATPLOTLIB = (
    "plot_results: matplotlib is not installed; install the plot extra "
    "(pip install '.[plot]', or pip install matplotlib) and run again"
)


@functools.cache
def _tool(name: str):
    """tools/<name>.py as a module, loaded once (shared code, not copied)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def family(name: str) -> str:
    """The experiment name without its ``.lambda-*`` suffix: dynamic heads that share it form a
    line."""
    return re.sub(r"\.lambda-[0-9_.]+$", "", name)


def point_from_folder(folder: Path, collected: Path | None) -> dict[str, Any]:
    """A row for an experiment folder: its results.json plus the collected row, if any."""
    collect = _tool("collect_results")
    from cvpods.engine.defaults import results_file

    folder = folder.resolve()
    cfg, build_model, trainer, _ = collect.run_config(folder)
    dataset = cfg.DATASETS.TEST[0]
    row: dict[str, Any] = {
        "experiment": folder.name,
        **collect.read_results(Path(results_file(cfg.OUTPUT_DIR, dataset))),
    }
    two_stage = cfg.MODEL.get("META_ARCHITECTURE") == "GeneralizedRCNN"
    row["head"] = (cfg.MODEL.RPN if two_stage else cfg.MODEL.FCOS).get("HEAD_NAME")
    saved = collected / f"{folder.name}.json" if collected is not None else None
    if saved is not None and saved.is_file():
        extra = collect.read_json(saved, "a row of tools/collect_results.py")
        for key in ("ms_per_image", "full_gflops", "head"):
            if extra.get(key) is not None:
                row[key] = extra[key]
    if "head_complexity" not in row and row.get("full_gflops") is None:
        model = build_model(cfg).eval()
        row["full_gflops"] = collect.full_head_gflops(
            model, trainer.build_test_loader(cfg, dataset)
        )[0]
    return row


def load_points(inputs: list[Path], collected: Path | None) -> list[dict[str, Any]]:
    """One dict per input: name, AP, GFLOPs, ms (or None), dynamic, rpn (an RPN head's GFLOPs)."""
    table = _tool("results_table")
    points = []
    for path in inputs:
        if path.is_dir():
            row = point_from_folder(path, collected)
        else:
            row = table.load_row(path)
        gflops = table.head_gflops(row)[0]
        points.append(
            {
                "name": row["experiment"],
                "ap": row["bbox"]["AP"],
                "gflops": gflops,
                "ms": row.get("ms_per_image"),
                "dynamic": isinstance(row.get("head_complexity"), dict),
                "rpn": table.is_rpn_head(row),
            }
        )
    return points


def style(group: str, members: list[dict[str, Any]]) -> dict[str, str]:
    """Marker, line and legend label of one group of points (a dynamic family or one static
    experiment): RPN heads (Faster R-CNN) are triangles, other dynamic heads circles joined by a
    line, other static heads squares."""
    dynamic, rpn = members[0]["dynamic"], members[0].get("rpn", False)
    kinds = [kind for kind, used in (("dynamic", dynamic), ("RPN head", rpn)) if used]
    return {
        "marker": "^" if rpn else "o" if dynamic else "s",
        "linestyle": "-" if dynamic and len(members) > 1 else "none",
        "label": f"{group} ({', '.join(kinds)})" if kinds else group,
    }


def point_text(point: dict[str, Any], line_size: int) -> str:
    """A point's label: a dynamic point on a line of ``line_size`` > 1 by what differs within the
    line (e.g. "lambda-0_1"), any other point by its experiment."""
    name = point["name"]
    if point["dynamic"] and line_size > 1:
        return name[len(family(name)) :].lstrip(".") or name
    return name


def label_offsets(
    anchors: list[tuple[float, float]],
    widths: list[float],
    height: float,
    right: list[bool],
    gap: float = 5.0,
) -> list[tuple[float, float, str]]:
    """Where each point's label goes, as ``(dx, dy, ha)`` offsets from its point (in points).

    ``anchors`` are the points' positions and ``widths`` their labels' widths, in points; a label
    in the right half (``right``) prefers the left of its point. Each label takes the first of
    above its point on its preferred side, above on the other side, then below (same order), whose
    box overlaps neither the labels placed before it nor another point and lies nearer to its own
    point than to any other (so that two close points' labels cannot read as each other's); then
    the first that only overlaps nothing; the first candidate when all overlap.
    """
    marker = 4.0  # half the side of the box kept free around each point

    def overlaps(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    def distance(point, box):
        dx = max(box[0] - point[0], 0.0, point[0] - box[2])
        dy = max(box[1] - point[1], 0.0, point[1] - box[3])
        return (dx * dx + dy * dy) ** 0.5

    points = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
    placed: list[tuple[float, float, float, float]] = []
    offsets = []
    for index, ((x, y), width) in enumerate(zip(anchors, widths)):
        side = -1.0 if right[index] else 1.0
        candidates = []  # (dx, dy, the label's box there)
        for dy in (gap, -gap - height):
            for dx in (side * gap, -side * gap):
                x0 = x + dx if dx > 0 else x + dx - width
                candidates.append((dx, dy, (x0, y + dy, x0 + width, y + dy + height)))
        others = placed + points[:index] + points[index + 1 :]
        other_anchors = anchors[:index] + anchors[index + 1 :]
        free = [c for c in candidates if not any(overlaps(c[2], other) for other in others)]
        nearest_free = [
            c
            for c in free
            if all(distance(a, c[2]) > distance((x, y), c[2]) for a in other_anchors)
        ]
        dx, dy, box = (nearest_free or free or candidates)[0]
        placed.append(box)
        offsets.append((dx, dy, "left" if dx > 0 else "right"))
    return offsets


def draw(points: list[dict[str, Any]], out: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.textpath import TextPath

    fontsize = 7
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    panels = (
        ("gflops", "head GFLOPs (average per test image; Faster R-CNN: the RPN head)"),
        ("ms", "ms per image (whole model)"),
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def group_of(point: dict[str, Any]) -> str:  # a dynamic family, or one static experiment
        return family(point["name"]) if point["dynamic"] else point["name"]

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for point in points:
        groups[group_of(point)].append(point)
    legend: dict[str, Any] = {}  # label -> handle, over both panels
    labels: list[tuple[Any, str, list[dict[str, Any]]]] = []  # (axes, key, points shown)
    for ax, (key, label) in zip(axes, panels):
        shown = []
        for index, (group, members) in enumerate(groups.items()):
            members = sorted(
                (p for p in members if isinstance(p[key], (int, float)) and p["ap"] is not None),
                key=lambda p: p[key],
            )
            if not members:
                continue
            shown += members
            (line,) = ax.plot(
                [p[key] for p in members],
                [p["ap"] for p in members],
                color=colors[index % len(colors)],
                **style(group, members),
            )
            legend.setdefault(line.get_label(), line)
        ax.set_xlabel(label)
        ax.set_ylabel("bbox AP")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.12, y=0.12)
        labels.append((ax, key, shown))
        if not shown:
            ax.text(
                0.5, 0.5, f"no {label} in the inputs\n(tools/collect_results.py measures it)",
                ha="center", va="center", transform=ax.transAxes,
            )  # fmt: skip
    axes[0].set_title("AP vs head GFLOPs")
    axes[1].set_title("AP vs measured time")
    if title:
        fig.suptitle(title)
    if legend:  # one legend for both panels, under them (it hid points inside a panel)
        fig.legend(
            list(legend.values()), list(legend), loc="outside lower center", ncols=3,
            fontsize=fontsize,
        )  # fmt: skip
    fig.canvas.draw()  # the final layout, so that labels can be placed where they stay free
    to_points = 72.0 / fig.dpi
    for ax, key, shown in labels:
        if not shown:
            continue
        xs = [p[key] for p in shown]
        middle = (min(xs) + max(xs)) / 2
        texts = [point_text(p, len(groups[group_of(p)])) for p in shown]
        anchors = [
            tuple(v * to_points for v in ax.transData.transform((p[key], p["ap"]))) for p in shown
        ]
        widths = [TextPath((0, 0), t, size=fontsize).get_extents().width for t in texts]
        offsets = label_offsets(anchors, widths, 1.2 * fontsize, [p[key] > middle for p in shown])
        for p, text, (dx, dy, ha) in zip(shown, texts, offsets):
            ax.annotate(
                text, (p[key], p["ap"]), textcoords="offset points", xytext=(dx, dy), ha=ha,
                fontsize=fontsize,
            )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(temporary, format="png", dpi=120)
        os.replace(temporary, out)
    finally:
        plt.close(fig)
        if temporary.exists():
            temporary.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", type=Path,
        help="rows of tools/collect_results.py (.json) or experiment folders",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "results" / "shapes" / "tradeoff.png"
    )
    parser.add_argument(
        "--collected", type=Path, default=REPO / "docs" / "results" / "shapes",
        help="folder of collected rows that complete experiment folders (ms, full GFLOPs)",
    )  # fmt: skip
    parser.add_argument("--title", help="a title over both panels")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return 2
    collect_error = _tool("collect_results").CollectError
    table_error = _tool("results_table").TableError
    try:
        points = load_points(args.inputs, args.collected)
    except (collect_error, table_error) as error:
        print(f"plot_results: error: {error}", file=sys.stderr)
        return 1
    draw(points, args.out, args.title)
    print(f"plot_results: wrote {args.out} ({len(points)} experiment(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
