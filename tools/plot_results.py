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
accuracy-FLOPs figure; each point is labelled with its experiment. Points without a measured ms
per image are left out of the second panel.

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
    saved = collected / f"{folder.name}.json" if collected is not None else None
    if saved is not None and saved.is_file():
        extra = collect.read_json(saved, "a row of tools/collect_results.py")
        for key in ("ms_per_image", "full_gflops"):
            if extra.get(key) is not None:
                row[key] = extra[key]
    if "head_complexity" not in row and row.get("full_gflops") is None:
        model = build_model(cfg).eval()
        row["full_gflops"] = collect.full_head_gflops(
            model, trainer.build_test_loader(cfg, dataset)
        )[0]
    return row


def load_points(inputs: list[Path], collected: Path | None) -> list[dict[str, Any]]:
    """One dict per input: name, AP, GFLOPs, ms (or None), dynamic."""
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
            }
        )
    return points


def draw(points: list[dict[str, Any]], out: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    panels = (
        ("gflops", "head GFLOPs (average per test image)"),
        ("ms", "ms per image (whole model)"),
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for point in points:
        groups[family(point["name"]) if point["dynamic"] else point["name"]].append(point)
    for ax, (key, label) in zip(axes, panels):
        shown = 0
        xs = [p[key] for p in points if isinstance(p[key], (int, float))]
        middle = (min(xs) + max(xs)) / 2 if xs else 0.0
        for index, (group, members) in enumerate(groups.items()):
            members = sorted(
                (p for p in members if isinstance(p[key], (int, float)) and p["ap"] is not None),
                key=lambda p: p[key],
            )
            if not members:
                continue
            shown += len(members)
            dynamic = members[0]["dynamic"]
            ax.plot(
                [p[key] for p in members],
                [p["ap"] for p in members],
                marker="o" if dynamic else "s",
                linestyle="-" if dynamic and len(members) > 1 else "none",
                color=colors[index % len(colors)],
                label=f"{group} (dynamic)" if dynamic else group,
            )
            for p in members:
                right = p[key] > middle  # labels of the right half go to the left of the point
                # A dynamic point is named by what differs within its line (e.g. "lambda-0_1").
                text = p["name"][len(family(p["name"])) :].lstrip(".") if dynamic else p["name"]
                ax.annotate(
                    text or p["name"], (p[key], p["ap"]), textcoords="offset points",
                    xytext=(-5 if right else 5, 5), ha="right" if right else "left", fontsize=7,
                )  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("bbox AP")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.12, y=0.12)
        if shown:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(
                0.5, 0.5, f"no {label} in the inputs\n(tools/collect_results.py measures it)",
                ha="center", va="center", transform=ax.transAxes,
            )  # fmt: skip
    axes[0].set_title("AP vs head GFLOPs")
    axes[1].set_title("AP vs measured time")
    if title:
        fig.suptitle(title)
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
