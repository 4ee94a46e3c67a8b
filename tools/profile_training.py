#!/usr/bin/env python
"""Time and profile training iterations of an experiment, built the way ``cvpods_train`` builds it.

The experiment folder's ``config.py`` / ``net.py`` give the config and the model (with ``KEY
VALUE`` overrides); the model, its optimizer (with the gradient clipping of the config) and the
training loader are those of ``cvpods_train`` (net.py's ``Trainer`` class, default
:class:`~cvpods.engine.DefaultTrainer`), and each iteration is the trainer's ``run_step``: the
batch, forward, losses, backward, optimizer step. Nothing is written (OUTPUT_DIR is a temporary
folder). The first ``--iterations`` batches of the training loader are loaded in this process
before the clock starts (data loading is timed on its own, per batch), and ``--warmup`` untimed
passes over them come first: the convolution kernels of each batch shape are then compiled
(oneDNN JIT, several tenths of a second per new shape), as they are after the first iterations of
a training run (the 360 iterations of the shapes schedule see 14 batch shapes).

Timing (default): per-iteration wall and CPU time (``time.process_time``; on a shared machine
the CPU time of a one-thread run is the steadier number) and their means over the measured
iterations. ``--profile``: the same iterations under ``torch.profiler``, and a table of where the
time goes by part of the model and of the step; each part's backward is the autograd work of
the operations it ran forward (matched through autograd's sequence numbers). The profiler's own
overhead adds a few percent, mostly to the many small operations.

Examples::

    python tools/profile_training.py                      # the quickstart's experiment, 1 thread
    python tools/profile_training.py --profile --iterations 3
    python tools/profile_training.py --experiment cvpods_playground/shapes.res18.fix.d4 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = REPO / "cvpods_playground" / "shapes.res18.dynamic.d4.lambda-0_1"

#: Parts of the table, in this order (those a model does not have are left out).
PARTS = (
    "data loading",
    "preprocess (normalise, pad)",
    "backbone (ResNet)",
    "FPN",
    "head: gates",
    "head: cost accounting",
    "head: fusion units (depthwise)",
    "head: fusion resize + sum",
    "head: depth cells (3x3 convs)",
    "head: gate x branch",
    "head: stages (other)",
    "head: predictors",
    "head (other)",
    "target assignment",
    "losses",
    "sum of losses, metrics",
    "zero_grad",
    "gradient clipping",
    "optimizer step",
    "backward (unattributed)",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="profile_training.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--experiment",
        default=str(DEFAULT_EXPERIMENT),
        help="experiment folder with config.py and net.py (default: %(default)s)",
    )
    parser.add_argument("--iterations", type=int, default=4, help="measured iterations")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed passes over the batches first (default 1)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--profile", action="store_true", help="the per-part table")
    parser.add_argument("opts", nargs="*", default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_intermixed_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides come as KEY VALUE pairs; got {args.opts}")
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    return args


def build_training(folder: str, overrides: Sequence[str]) -> tuple[Any, Any, list[list[dict]]]:
    """``(cfg, trainer, batches)``: a SimpleTrainer over the model and optimizer that
    ``cvpods_train`` builds in ``folder`` (seeded as it seeds them), and the training loader
    (read in this process) to draw batches from."""
    from cvpods.engine.launcher import load_experiment_with_trainer, prepare_config
    from cvpods.engine.train_loop import SimpleTrainer
    from cvpods.utils.env import seed_all_rng

    cfg, build_model, trainer_class = load_experiment_with_trainer(folder)
    output_dir = tempfile.mkdtemp(prefix="profile_training_")
    prepare_config(
        cfg, folder, [*overrides, "OUTPUT_DIR", output_dir, "DATALOADER.NUM_WORKERS", "0"]
    )
    seed_all_rng(cfg.SEED)
    model = build_model(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    optimizer = trainer_class.build_optimizer(cfg, model)
    loader = trainer_class.build_train_loader(cfg)
    trainer = SimpleTrainer(model, [], optimizer, amp=bool(cfg.SOLVER.AMP.ENABLED))
    return cfg, trainer, loader


# ---------------------------------------------------------------------------------------------
# Part labels: record_function ranges around the functions and modules of each part
# ---------------------------------------------------------------------------------------------


def _labelled(function: Callable, label: str) -> Callable:
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(label):
            return function(*args, **kwargs)

    return run


@contextlib.contextmanager
def part_labels(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Wrap the functions of each part of :data:`PARTS` in a ``record_function`` range named
    after the part (restored on exit)."""
    from cvpods.engine import train_loop
    from cvpods.layers import depth_cell, head_stage, scale_fusion, spatial_gate
    from cvpods.modeling.meta_arch import fcos, fcos_heads

    patches: list[tuple[Any, str, str]] = [
        (fcos.FCOS, "preprocess_image", "preprocess (normalise, pad)"),
        (fcos.FCOS, "get_ground_truth", "target assignment"),
        (fcos.FCOS, "losses", "losses"),
        (fcos_heads._FCOSPredictors, "predict", "head: predictors"),
        (head_stage, "gate_logits", "head: gates"),
        (spatial_gate.SpatialGate, "forward", "head: gates"),
        (spatial_gate.SpatialGate, "modulate", "head: gate x branch"),
        (depth_cell.DynamicDepthCell, "add_cost", "head: cost accounting"),
        (scale_fusion.GatedDepthwiseUnit, "add_cost", "head: cost accounting"),
        (spatial_gate.CostCollector, "add_fusion_gate", "head: cost accounting"),
        (spatial_gate.CostCollector, "add_depth_gate", "head: cost accounting"),
        (scale_fusion.GatedDepthwiseUnit, "forward", "head: fusion units (depthwise)"),
        (head_stage, "neighbour_sum", "head: fusion resize + sum"),
        (depth_cell.ResidualBranch, "forward", "head: depth cells (3x3 convs)"),
        (head_stage.DynamicHeadStage, "forward", "head: stages (other)"),
        (depth_cell.DynamicDepthCell, "forward", "head: stages (other)"),
        (train_loop, "_sum_losses", "sum of losses, metrics"),
        (train_loop.SimpleTrainer, "_write_metrics", "sum of losses, metrics"),
    ]
    if hasattr(depth_cell, "dilated_gate"):
        patches.append((depth_cell, "dilated_gate", "head: cost accounting"))
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    total = spatial_gate.CostCollector.__dict__["total"]
    instance_patches: list[tuple[Any, str, str]] = [(optimizer, "zero_grad", "zero_grad")]
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        instance_patches.append((backbone, "forward", "FPN"))
        if hasattr(backbone, "bottom_up"):
            instance_patches.append((backbone.bottom_up, "forward", "backbone (ResNet)"))
    head = getattr(model, "head", None)
    if head is not None:
        instance_patches.append((head, "forward", "head (other)"))
    try:
        for owner, name, label in patches:
            setattr(owner, name, _labelled(owner.__dict__[name], label))
        spatial_gate.CostCollector.total = property(_labelled(total.fget, "head: cost accounting"))
        for owner, name, label in instance_patches:
            setattr(owner, name, _labelled(getattr(owner, name), label))
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        spatial_gate.CostCollector.total = total
        for owner, name, _ in instance_patches:
            owner.__dict__.pop(name, None)


def _clipped_step_with_labels(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """The optimizer's step with gradient clipping and the update in separate ranges (the
    clipping wrapper of :func:`cvpods.solver.build.maybe_add_gradient_clipping` runs the clip,
    then the base class's step)."""
    step = type(optimizer).step
    base = type(optimizer).__mro__[1]
    if step is base.step:  # no clipping wrapper
        return _labelled(optimizer.step, "optimizer step")

    def run() -> None:
        # The wrapper's step is clip + base step: time the base step inside it separately.
        own = base.__dict__.get("step")
        base.step = _labelled(base.step, "optimizer step")
        try:
            with torch.profiler.record_function("gradient clipping"):
                step(optimizer)
        finally:
            if own is None:
                del base.step
            else:
                base.step = own

    return run


def run_step(trainer: Any, batch: list[dict], step: Callable[[], None] | None = None) -> None:
    """One ``SimpleTrainer.run_step`` on ``batch`` (``step``: the optimizer step to call)."""
    from cvpods.engine.train_loop import _sum_losses, loss_tensors

    if step is None:
        trainer._data_loader_iter = iter([batch])
        trainer.run_step()
        return
    loss_dict = loss_tensors(trainer.model(batch))
    losses = _sum_losses(loss_dict, trainer.iter)
    trainer.optimizer.zero_grad(set_to_none=True)
    with torch.profiler.record_function("backward"):
        losses.backward()
    step()
    trainer._write_metrics(loss_dict, 0.0)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def part_table(events: Any, iterations: int, data_ms: float) -> list[tuple[str, float, float]]:
    """``[(part, forward ms, backward ms)]`` per iteration from the profiler's events."""
    labels = set(PARTS) | {"backward"}

    def part_of(event: Any) -> str | None:
        while event is not None:
            if event.name in labels:
                return event.name
            event = event.cpu_parent
        return None

    def own_time(event: Any) -> float:
        """The range's time less the labelled ranges nested in it."""
        total, stack = event.cpu_time_total, list(event.cpu_children)
        while stack:
            child = stack.pop()
            if child.name in labels:
                total -= child.cpu_time_total
            else:
                stack.extend(child.cpu_children)
        return total

    forward, backward = Counter(), Counter()
    # An operation records the sequence number of the autograd node it creates, but operations
    # creating none record the next node's number too: the last one started is the creator.
    creator: dict[int, tuple[float, str]] = {}
    for event in events:
        if event.name in labels and event.name != "backward":
            forward[event.name] += own_time(event)
        if event.sequence_nr >= 0 and not event.name.startswith("autograd::"):
            part = part_of(event)
            start = event.time_range.start
            if part not in (None, "backward") and start >= creator.get(event.sequence_nr, (-1,))[0]:
                creator[event.sequence_nr] = (start, part)
    for event in events:
        if event.name == "backward":
            backward["backward (unattributed)"] += event.cpu_time_total
    for event in events:
        if event.name.startswith("autograd::engine::evaluate_function"):
            part = creator.get(event.sequence_nr, (0, "backward (unattributed)"))[1]
            if part != "backward (unattributed)":
                backward[part] += event.cpu_time_total
                backward["backward (unattributed)"] -= event.cpu_time_total
    scale = 1000.0 * iterations
    rows = [("data loading", data_ms, 0.0)]
    rows += [
        (part, forward[part] / scale, backward[part] / scale)
        for part in PARTS[1:]
        if forward[part] or backward[part]
    ]
    return rows


def print_table(rows: list[tuple[str, float, float]], iteration_ms: float) -> None:
    total = sum(f + b for _, f, b in rows)
    print(f"{'part':34s} {'forward':>9s} {'backward':>9s} {'total':>9s} {'share':>7s}")
    for part, f, b in rows:
        print(f"{part:34s} {f:9.1f} {b:9.1f} {f + b:9.1f} {100 * (f + b) / total:6.1f}%")
    print(f"{'sum (ms per iteration)':34s} {'':9s} {'':9s} {total:9.1f} {100.0:6.1f}%")
    print(
        f"(profiled iteration without data loading: {iteration_ms:.1f} ms; the profiler's "
        "overhead is included)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from cvpods.utils.events import EventStorage

    cfg, trainer, loader = build_training(args.experiment, args.opts)
    batches, data_times = [], []
    iterator = iter(loader)
    for _ in range(args.iterations):
        start = time.process_time()
        batches.append(next(iterator))
        data_times.append(time.process_time() - start)
    data_ms = 1000 * statistics.mean(data_times[1:] or data_times)
    print(
        f"{args.experiment}: {args.iterations} batches of {cfg.SOLVER.IMS_PER_BATCH} images, "
        f"{args.threads} thread(s); data loading {data_ms:.1f} ms CPU per batch"
    )
    with EventStorage(0) as storage:
        trainer.storage = storage
        for _ in range(args.warmup):
            for index, batch in enumerate(batches):
                trainer.iter = storage.iter = index
                run_step(trainer, batch)
        measured = range(args.iterations)
        if args.profile:
            with part_labels(trainer.model, trainer.optimizer):
                step = _clipped_step_with_labels(trainer.optimizer)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                    start = time.process_time()
                    for index in measured:
                        trainer.iter = storage.iter = index
                        run_step(trainer, batches[index], step)
                    elapsed = time.process_time() - start
            rows = part_table(p.events(), args.iterations, data_ms)
            print_table(rows, 1000 * elapsed / args.iterations)
            return
        wall, cpu = [], []
        for index in measured:
            trainer.iter = storage.iter = index
            w, c = time.perf_counter(), time.process_time()
            run_step(trainer, batches[index])
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
            print(f"iteration {index}: wall {wall[-1]:.3f} s, CPU {cpu[-1]:.3f} s", flush=True)
    print(
        f"mean over {args.iterations} iterations (without data loading): "
        f"wall {statistics.mean(wall):.3f} s/it, CPU {statistics.mean(cpu):.3f} s/it"
    )


if __name__ == "__main__":
    main()
