#!/usr/bin/env python
"""Print the Markdown table of result rows written by tools/collect_results.py.

    python tools/results_table.py docs/results/shapes/*.json
    python tools/results_table.py docs/results/shapes/*.json --readme README.md

Columns: the head (its class), AP, AP50, APs / APm / APl (percent), head GFLOPs avg / min / max
over the test images (a dynamic head's ``head_complexity``; for a static head its full cost, which
it always computes), the head's full cost, the average as a percentage of it, whole-model ms per
image and training minutes; ``–`` where a row has no value. The head of a Faster R-CNN row is its
RPN head (``*RPNHead``; the ROI box head is not counted). A note under the table says how the times
were measured.

``--readme FILE`` also puts the table between the lines ``<!-- results:shapes:start -->`` and
``<!-- results:shapes:end -->`` of FILE (atomically; nothing else in FILE changes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

START = "<!-- results:shapes:start -->"
END = "<!-- results:shapes:end -->"
DASH = "–"

HEADER = (
    "| experiment | head | AP | AP50 | APs | APm | APl | head GFLOPs avg | min | max | full "
    "| % of full | ms / image | train min |"
)
ALIGN = "| --- | --- |" + " ---: |" * 12

#: What the GFLOPs of an RPN-head row count (said in the note when the table has such a row).
RPN_NOTE = "head GFLOPs of an RPN head (Faster R-CNN): the RPN head only, not the ROI box head"


class TableError(RuntimeError):
    """A row file or the README cannot be used; the message names the file and the problem."""


def load_row(path: Path) -> dict[str, Any]:
    """A result row, checked for what the table needs."""
    if not path.is_file():
        raise TableError(f"{path}: no such file (make it with tools/collect_results.py)")
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TableError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(row, dict):
        raise TableError(f"{path}: expected a JSON object, found {type(row).__name__}")
    missing = [key for key in ("experiment", "bbox", "full_gflops") if key not in row]
    if missing:
        raise TableError(
            f"{path}: no {', '.join(repr(k) for k in missing)}: not a row of "
            "tools/collect_results.py (a raw results.json? collect it first)"
        )
    if not isinstance(row["bbox"], dict) or "AP" not in row["bbox"]:
        raise TableError(f"{path}: 'bbox' has no 'AP'")
    return row


def _number(value: Any, digits: int) -> str:
    if value is None or not isinstance(value, (int, float)) or value != value:
        return DASH
    return f"{value:.{digits}f}"


def head_gflops(row: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(avg, min, max) head GFLOPs: the dynamic head's measured cost, else the full cost."""
    complexity = row.get("head_complexity")
    if isinstance(complexity, dict):
        return (
            complexity.get("avg_gflops"),
            complexity.get("min_gflops"),
            complexity.get("max_gflops"),
        )
    full = row.get("full_gflops")
    return full, row.get("full_gflops_min", full), row.get("full_gflops_max", full)


def is_rpn_head(row: dict[str, Any]) -> bool:
    """Whether the row's head is the RPN head of a two-stage detector (``StandardRPNHead``,
    ``FixRPNHead``, ``DynamicRPNHead``)."""
    head = row.get("head")
    return isinstance(head, str) and head.endswith("RPNHead")


def table_line(row: dict[str, Any]) -> str:
    bbox = row["bbox"]
    avg, low, high = head_gflops(row)
    full = row.get("full_gflops")
    percent = 100.0 * avg / full if isinstance(avg, (int, float)) and full else None
    cells = [
        f"`{row['experiment']}`",
        f"`{row['head']}`" if isinstance(row.get("head"), str) else DASH,
        *(_number(bbox.get(key), 1) for key in ("AP", "AP50", "APs", "APm", "APl")),
        _number(avg, 3),
        _number(low, 3),
        _number(high, 3),
        _number(full, 3),
        _number(percent, 0),
        _number(row.get("ms_per_image"), 1),
        _number(row.get("train_minutes"), 1),
    ]
    return "| " + " | ".join(cells) + " |"


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}" if low == high else f"{low:.2f}–{high:.2f}"


def note(rows: list[dict[str, Any]]) -> str:
    """What the head GFLOPs of RPN heads count, and how the rows were measured: timing set-up,
    load average, commits."""
    parts = []
    timings = [r.get("timing") or {} for r in rows if r.get("ms_per_image") is not None]
    setups = sorted(
        {
            f"{t.get('threads') or '?'} thread(s), {t.get('clock') or '?'} clock"
            + (f", {t['images']} images" if t.get("images") else "")
            for t in timings
        }
    )
    if any(is_rpn_head(r) for r in rows):
        parts.append(RPN_NOTE)
    if setups:
        parts.append("ms / image: whole model, batch 1, " + "; ".join(setups))
    loads = [r["load_average"][0] for r in rows if r.get("load_average")]
    if loads:
        parts.append(f"1-min load average {_span(loads)} when measured")
    commits = sorted({r["git_commit"][:7] for r in rows if r.get("git_commit")})
    if commits:
        parts.append(f"commit {', '.join(commits)}")
    return "_" + "; ".join(parts) + "._" if parts else ""


def make_table(rows: list[dict[str, Any]]) -> str:
    lines = [HEADER, ALIGN, *(table_line(row) for row in rows)]
    text = note(rows)
    return "\n".join(lines) + ("\n\n" + text if text else "") + "\n"


def replace_between_markers(text: str, content: str, where: str = "README") -> str:
    """``text`` with everything between the START and END marker lines replaced by ``content``."""
    starts, ends = text.count(START), text.count(END)
    if starts == 0 or ends == 0:
        raise TableError(
            f"{where}: no {START if starts == 0 else END} marker; add the two lines\n"
            f"{START}\n{END}\nwhere the table should go"
        )
    if starts > 1 or ends > 1:
        raise TableError(f"{where}: the markers must appear once each ({starts} start, {ends} end)")
    head, rest = text.split(START)
    if END not in rest:
        raise TableError(f"{where}: {END} comes before {START}")
    _, tail = rest.split(END)
    return f"{head}{START}\n{content.rstrip()}\n{END}{tail}"


def update_readme(path: Path, content: str) -> None:
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    new = replace_between_markers(path.read_text(encoding="utf-8"), content, str(path))
    try:
        from cvpods.utils.file_io import atomic_write_text
    except ImportError:
        from cvpods.checkpoint.file_io import atomic_write_text
    atomic_write_text(new, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("rows", nargs="+", type=Path, help="JSON rows of tools/collect_results.py")
    parser.add_argument("--readme", type=Path, help="also write the table between its markers")
    args = parser.parse_args(argv)
    try:
        rows = [load_row(path) for path in args.rows]
        table = make_table(rows)
        if args.readme is not None:
            update_readme(args.readme, table)
    except TableError as error:
        print(f"results_table: error: {error}", file=sys.stderr)
        return 1
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
