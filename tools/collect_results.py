#!/usr/bin/env python
"""Turn trained experiment folders into result rows: ``<out>/<experiment>.json``.

Each row is the ``results.json`` that ``cvpods_test`` (or the evaluation at the end of
``cvpods_train``) wrote to ``OUTPUT_DIR/inference/<dataset>/results.json`` (``bbox``, and
``head_complexity`` for a dynamic head), plus:

* ``full_gflops`` (and ``full_gflops_min`` / ``_max``): the head's full cost (every position
  computed; ``cvpods.modeling.meta_arch.head_complexity.head_full_cost``, the unit of
  ``tools/head_flops.py``) averaged over the same test images at their test-time size;
* ``ms_per_image``: whole-model eval time per image, measured as ``tools/benchmark_head.py
  --trained`` does (its ``measure_trained``); ``--ms-from FILE`` takes it from a file instead,
  ``--no-timing`` leaves it null;
* ``train_minutes``: the training's wall time, from the ``Total training time`` lines of
  ``OUTPUT_DIR/log.txt`` (summed over resumed sessions), else estimated from ``metrics.json``;
* ``experiment``, ``dataset``, ``head``, ``dynamic``, ``git_commit``, ``date``, ``threads``,
  ``timing`` and ``load_average`` (1/5/15 min, read when the timing ended).

The model is built from the run's own config (``OUTPUT_DIR/inference/config_dump.py`` written by
``cvpods_test``, else the training's ``OUTPUT_DIR/config_dump.py``, else ``config.py``), so
command-line overrides of the run are honoured. Files are written atomically.

Examples::

    python tools/collect_results.py cvpods_playground/shapes.res18.* --out docs/results/shapes/
    python tools/collect_results.py cvpods_playground/shapes.res18.fcos --no-timing
    python tools/collect_results.py cvpods_playground/shapes.res18.fcos --ms-from bench.txt

``--ms-from`` reads a JSON file (``{"<experiment>": ms, ...}``, or a row written by this tool)
or the text printed by ``tools/benchmark_head.py --trained`` (its Markdown rows).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent

#: ``Total training time: 0:13:54`` (``datetime.timedelta`` text, possibly ``1 day, 2:03:04``).
_TOTAL_TIME = re.compile(r"Total training time: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)")


class CollectError(RuntimeError):
    """A folder or file cannot give a result row; the message names the file and what is missing."""


def _benchmark_head():
    """tools/benchmark_head.py as a module (its ``measure_trained`` is shared, not copied)."""
    spec = importlib.util.spec_from_file_location("benchmark_head", TOOLS / "benchmark_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def atomic_write_text(text: str, path: str) -> None:
    """The project's atomic write (temporary file + rename), wherever it lives now."""
    try:
        from cvpods.utils.file_io import atomic_write_text as write
    except ImportError:
        from cvpods.checkpoint.file_io import atomic_write_text as write
    write(text, path)


# ---------------------------------------------------------------------------------------------
# Reading a run
# ---------------------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    """``path`` parsed as JSON; CollectError naming the file when it is missing or broken."""
    if not path.is_file():
        raise CollectError(f"{path}: no such file ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CollectError(f"{path}: not valid JSON ({error})") from None


def read_results(path: Path) -> dict[str, Any]:
    """A ``results.json`` of cvpods_test, checked for the entries a result row needs."""
    results = read_json(path, "evaluate the experiment first: cvpods_test in its folder")
    if not isinstance(results, dict):
        raise CollectError(f"{path}: expected a JSON object, found {type(results).__name__}")
    bbox = results.get("bbox")
    if not isinstance(bbox, dict):
        raise CollectError(
            f"{path}: no 'bbox' entry (it has: {', '.join(sorted(results)) or 'nothing'})"
        )
    missing = [key for key in ("AP", "AP50") if key not in bbox]
    if missing:
        raise CollectError(f"{path}: 'bbox' has no {', '.join(missing)}")
    complexity = results.get("head_complexity")
    if complexity is not None:
        missing = [k for k in ("avg_gflops", "min_gflops", "max_gflops") if k not in complexity]
        if missing:
            raise CollectError(f"{path}: 'head_complexity' has no {', '.join(missing)}")
    return results


def train_minutes(output_dir: Path) -> tuple[float, str]:
    """The training's wall time in minutes and where it was read.

    The ``Total training time`` lines of ``log.txt`` (one per training session: a resumed run
    adds its own), else the ``time`` (seconds per iteration, smoothed) of ``metrics.json``
    multiplied by the iterations each line covers.
    """
    log = output_dir / "log.txt"
    if log.is_file():
        seconds = [
            int(m[1] or 0) * 86400 + int(m[2]) * 3600 + int(m[3]) * 60 + int(m[4])
            for m in _TOTAL_TIME.finditer(log.read_text(encoding="utf-8", errors="replace"))
        ]
        if seconds:
            return sum(seconds) / 60.0, f"{log.name}: Total training time"
    metrics = output_dir / "metrics.json"
    total, previous = 0.0, -1
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(record, dict) and "time" in record and "iteration" in record:
                total += float(record["time"]) * (record["iteration"] - previous)
                previous = record["iteration"]
    if previous >= 0:
        return total / 60.0, f"{metrics.name}: iteration times x iterations (estimate)"
    raise CollectError(
        f"{log}: no 'Total training time' line, and {metrics} has no 'time' entries: "
        "was this experiment trained here (cvpods_train) with this OUTPUT_DIR?"
    )


#: The keys that say what the library's ``build_model`` builds (net.py re-exports it).
BUILDER_KEYS = ("MODEL.META_ARCHITECTURE", "MODEL.FCOS.HEAD_NAME", "MODEL.RPN.HEAD_NAME")


def fill_builder_keys(dumped, current):
    """``dumped`` with each of :data:`BUILDER_KEYS` it lacks taken from ``current``.

    A run dumped before those keys existed (its net.py then named the head itself) is rebuilt
    with the values of the experiment's config.py; a key the dump holds keeps its value.
    """
    for key in BUILDER_KEYS:
        *parents, name = key.split(".")
        mine, theirs = dumped, current
        for part in parents:
            mine, theirs = mine.get(part), theirs.get(part)
            if not isinstance(mine, dict) or not isinstance(theirs, dict):
                break
        else:
            if name not in mine and name in theirs:
                mine[name] = theirs[name]
    return dumped


def run_config(folder: Path):
    """``(cfg, build_model, trainer, config_source)`` of the run in ``folder``."""
    from cvpods.engine.launcher import (
        ExperimentError,
        load_experiment_with_trainer,
        prepare_config,
    )

    try:
        cfg, build_model, trainer = load_experiment_with_trainer(str(folder))
    except ExperimentError as error:
        raise CollectError(str(error)) from None
    prepare_config(cfg, str(folder), [])
    output_dir = cfg.OUTPUT_DIR
    source = folder / "config.py"
    for dump in (
        Path(output_dir) / "inference" / "config_dump.py",
        Path(output_dir) / "config_dump.py",
    ):
        if dump.is_file():
            try:
                dumped = type(cfg).load_dump(dump.read_text(encoding="utf-8"))
            except Exception as error:  # noqa: BLE001 - any parse error is reported the same way
                raise CollectError(f"{dump}: not a readable config dump ({error})") from None
            cfg = fill_builder_keys(dumped, cfg)
            source = dump
            break
    cfg.OUTPUT_DIR = output_dir  # the folder may have moved since the dump was written
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", 0])
    return cfg, build_model, trainer, source


def full_head_gflops(model, loader) -> tuple[float, float, float, int]:
    """``(avg, min, max, images)`` of the head's full cost over every image of ``loader``."""
    from cvpods.modeling.meta_arch.head_complexity import MACS_PER_GFLOP, head_full_cost

    divisibility = model.backbone.size_divisibility
    by_size: dict[tuple[int, int], float] = {}
    values = []
    for inputs in loader:
        for item in inputs:
            size = tuple(item["image"].shape[-2:])
            if size not in by_size:
                by_size[size] = head_full_cost(model.head, size, divisibility) / MACS_PER_GFLOP
            values.append(by_size[size])
    if not values:
        return float("nan"), float("nan"), float("nan"), 0
    return sum(values) / len(values), min(values), max(values), len(values)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def ms_from_file(path: Path, experiment: str) -> dict[str, Any]:
    """The ms per image of ``experiment`` recorded in ``path`` (see the module docstring)."""
    if not path.is_file():
        raise CollectError(f"--ms-from {path}: no such file")
    text = path.read_text(encoding="utf-8")
    timing: dict[str, Any] = {"source": str(path), "threads": None, "clock": None}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "ms_per_image" in data:  # a row written by this tool
        if data.get("experiment") not in (None, experiment):
            raise CollectError(
                f"--ms-from {path}: a row of {data['experiment']!r}, not {experiment!r}"
            )
        return {**timing, **data.get("timing", {}), "source": str(path), "ms": data["ms_per_image"]}
    if isinstance(data, dict):
        if experiment not in data:
            raise CollectError(
                f"--ms-from {path}: no entry for {experiment!r} (it has: {', '.join(data) or 'none'})"
            )
        value = data[experiment]
        ms = value.get("ms_per_image") if isinstance(value, dict) else value
        if not isinstance(ms, (int, float)):
            raise CollectError(f"--ms-from {path}: {experiment!r} has no number of ms per image")
        return {**timing, "ms": float(ms)}
    # The text of tools/benchmark_head.py --trained: "# torch ..., N thread(s), cpu clock" and
    # rows "| experiment | head | ms / image | ... |".
    header = re.search(r"(\d+) thread\(s\), (\w+) clock", text)
    if header:
        timing.update(threads=int(header[1]), clock=header[2])
    names = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and line.lstrip().startswith("|"):
            names.append(cells[0])
            if cells[0] == experiment:
                try:
                    return {**timing, "ms": float(cells[2])}
                except ValueError:
                    raise CollectError(
                        f"--ms-from {path}: the row of {experiment!r} has no ms per image "
                        f"({cells[1]})"
                    ) from None
    raise CollectError(
        f"--ms-from {path}: no row for {experiment!r} (JSON {{experiment: ms}} or the output of "
        f"tools/benchmark_head.py --trained; rows found: {', '.join(names[2:]) or 'none'})"
    )


# ---------------------------------------------------------------------------------------------
# One row
# ---------------------------------------------------------------------------------------------


def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def collect(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The result row of the experiment in ``folder``."""
    import torch

    from cvpods.engine.defaults import results_file

    folder = folder.resolve()
    if not folder.is_dir():
        raise CollectError(f"{folder}: no such experiment folder")
    experiment = folder.name
    cfg, build_model, trainer, config_source = run_config(folder)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    output_dir = Path(cfg.OUTPUT_DIR)
    results_path = Path(results_file(str(output_dir), dataset))
    results = read_results(results_path)
    minutes, minutes_source = train_minutes(output_dir)

    last = output_dir / "last_checkpoint"
    if last.is_file():
        checkpoint = output_dir / last.read_text(encoding="utf-8").strip()
        if checkpoint.is_file() and checkpoint.stat().st_mtime > results_path.stat().st_mtime:
            print(
                f"collect_results: warning: {results_path} is older than {checkpoint.name}: "
                "run cvpods_test again for the newest weights",
                file=sys.stderr,
            )

    model = build_model(cfg).eval()
    loader = trainer.build_test_loader(cfg, dataset)
    full_avg, full_min, full_max, full_images = full_head_gflops(model, loader)
    head = type(model.head).__name__
    del model

    timing: dict[str, Any]
    if args.no_timing:
        ms, timing = None, {"source": "not measured (--no-timing)"}
    elif args.ms_from is not None:
        found = ms_from_file(args.ms_from, experiment)
        ms = found.pop("ms")
        timing = found
    else:
        torch.set_num_threads(args.threads)
        clock = time.perf_counter if args.clock == "wall" else time.thread_time
        measured = _benchmark_head().measure_trained(folder, args.images, clock, cfg=cfg)
        if measured is None:
            raise CollectError(f"{output_dir / 'last_checkpoint'}: no checkpoint to time")
        ms = measured["ms_per_image"]
        timing = {
            "source": "tools/benchmark_head.py measure_trained",
            "images": measured["images"],
            "threads": args.threads,
            "clock": args.clock,
            "weights": os.path.relpath(measured["weights"], folder)
            if measured["weights"]
            else None,
        }
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None

    row: dict[str, Any] = {"experiment": experiment, "dataset": dataset, **results}
    row.update(
        head=head,
        dynamic="head_complexity" in results,
        full_gflops=full_avg,
        full_gflops_min=full_min,
        full_gflops_max=full_max,
        full_gflops_images=full_images,
        ms_per_image=ms,
        timing=timing,
        train_minutes=minutes,
        train_minutes_source=minutes_source,
        threads=timing.get("threads"),
        load_average=load,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        **git_commit(),
        results_file=os.path.relpath(results_path, folder),
        config=os.path.relpath(config_source, folder),
    )
    return row


def write_row(row: dict[str, Any], out: Path) -> Path:
    """``row`` as strict JSON in ``out/<experiment>.json`` (atomic); NaN becomes null."""
    from cvpods.evaluation.testing import strict_json_results

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{row['experiment']}.json"
    text = json.dumps(strict_json_results(row), indent=2, allow_nan=False) + "\n"
    atomic_write_text(text, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiments", nargs="+", type=Path, help="trained experiment folders")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "shapes")
    parser.add_argument("--dataset", help="test dataset (default: the config's DATASETS.TEST[0])")
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument("--no-timing", action="store_true", help="leave ms_per_image null")
    timing.add_argument("--ms-from", type=Path, metavar="FILE", help="take ms_per_image from FILE")
    parser.add_argument("--images", type=int, default=50, help="timed test images per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="cpu",
        help="wall-clock time, or this thread's CPU time (robust on shared cores; needs --threads 1)",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1 and not (args.no_timing or args.ms_from):
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1")

    failed = 0
    for folder in args.experiments:
        try:
            row = collect(folder, args)
        except CollectError as error:
            print(f"collect_results: error: {error}", file=sys.stderr)
            failed += 1
            continue
        path = write_row(row, args.out)
        ms = row["ms_per_image"]
        print(
            f"{row['experiment']}: AP {row['bbox']['AP']:.1f}, full head "
            f"{row['full_gflops']:.3f} GFLOPs, "
            f"{'-' if ms is None or math.isnan(ms) else f'{ms:.1f}'} ms/image, "
            f"train {row['train_minutes']:.1f} min -> {path}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
