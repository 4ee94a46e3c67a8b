"""The ``cvpods_train`` and ``cvpods_test`` commands, run inside an experiment folder.

An experiment folder holds ``config.py`` (a module-level ``config``: a cvpods config object) and
``net.py`` (``build_model(cfg) -> nn.Module``). Both are loaded from the current folder by file
path, so any folder holding the pair works, inside this repository or not. ``net.py`` may also
define ``Trainer``, a :class:`~cvpods.engine.DefaultTrainer` subclass, to change how the data,
evaluation or hooks are built; it is then used for training and evaluation.

Outputs (all under OUTPUT_DIR; a relative OUTPUT_DIR, like the default ``./log``, is taken
relative to the experiment folder):

* ``log.txt`` (``log.txt.rankN`` for other processes), ``config_dump.py`` (the full config, with
  the keys changed from the defaults in its header), ``metrics.json`` (one JSON object per
  logged iteration), TensorBoard event files;
* ``model_NNNNNNN.pth``, ``model_final.pth`` and ``last_checkpoint``;
* ``inference/<dataset>/results.json``: the final metrics of each DATASETS.TEST dataset, e.g.
  ``{"bbox": {"AP": 52.3, "AP50": ...}, "head_complexity": {...}}`` (AP in percent; strict
  JSON: an undefined metric is ``null`` with its reason under ``"null_reasons"``), next to the
  evaluator's ``coco_instances_results.json``.

Nothing is overwritten silently:

* ``OUTPUT_DIR/.lock`` (:class:`~cvpods.checkpoint.run_folder.OutputDirLock`) is held while a
  command writes into OUTPUT_DIR: a second ``cvpods_train`` in the same folder fails at once,
  naming the PID that holds it; the lock of a killed run is detected as stale and taken over.
* ``cvpods_train`` refuses to start in an OUTPUT_DIR holding checkpoints of an earlier run unless
  given ``--resume`` (continue it) or ``--start-over`` (move it to ``OUTPUT_DIR.old-<timestamp>``
  and train from scratch). Temporary files of interrupted writes are removed at start.
* ``cvpods_test`` of the run's newest checkpoint (the default) writes
  ``inference/<dataset>/results.json`` and ``inference/config_dump.py`` (the training's
  ``config_dump.py`` stays). Any other weights (MODEL.WEIGHTS, older checkpoints of the run) are
  evaluated into ``OUTPUT_DIR/eval/<weights file name>/`` (its own ``log.txt``,
  ``config_dump.py``, ``inference/``; ``weights.txt`` names the weights).
* Weights that fill less than MODEL.WEIGHTS_MIN_MATCHED_FRACTION (default 0.5) of the model's
  tensors stop the evaluation with a table of what matched, instead of reporting AP 0.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import nn

from cvpods.checkpoint.file_io import (
    DiskFullError,
    NotACheckpointError,
    atomic_write_text,
    check_checkpoint_file,
    remove_temporary_files,
)
from cvpods.checkpoint.model_loading import DEFAULT_MIN_MATCHED_FRACTION, WeightsMismatchError
from cvpods.checkpoint.run_folder import (
    LOCK_FILE,
    OutputDirLock,
    OutputDirLockedError,
    previous_run,
)
from cvpods.checkpoint.safe_pickle import UnsafeCheckpointError
from cvpods.configs import BaseConfig, ConfigError
from cvpods.data.validation import BadDataError
from cvpods.utils import comm

from .defaults import (
    CONFIG_DUMP_FILE,
    DefaultTrainer,
    default_argument_parser,
    default_setup,
    results_file,
)
from .distributed_launch import launch
from .precision import add_precision_arguments, precision_overrides

__all__ = [
    "EvaluationTarget",
    "ExperimentError",
    "evaluation_target",
    "find_weights_to_test",
    "prepare_training_folder",
    "load_experiment",
    "load_experiment_with_trainer",
    "prepare_config",
    "test_main",
    "train_main",
]

logger = logging.getLogger(__name__)


class ExperimentError(RuntimeError):
    """The experiment folder, its files or the requested weights cannot be used."""


# ---------------------------------------------------------------------------------------------
# Loading an experiment folder
# ---------------------------------------------------------------------------------------------


def _import_file(path: str, role: str) -> ModuleType:
    """Import the Python file ``path`` under a name unique to its absolute path."""
    if not os.path.isfile(path):
        raise ExperimentError(
            f"{path} not found: run the command inside an experiment folder holding config.py "
            f"(defining `config`) and net.py (defining `build_model(cfg)`); {role}"
        )
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    module_name = f"cvpods_experiment_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ExperimentError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise
    return module


def load_experiment(folder: str) -> tuple[BaseConfig, Callable[[Any], nn.Module]]:
    """The ``config`` of ``folder/config.py`` and the ``build_model`` of ``folder/net.py``."""
    cfg, build_model, _ = load_experiment_with_trainer(folder)
    return cfg, build_model


def load_experiment_with_trainer(
    folder: str,
) -> tuple[BaseConfig, Callable[[Any], nn.Module], type[DefaultTrainer]]:
    """Like :func:`load_experiment`, plus net.py's ``Trainer`` (default: DefaultTrainer).

    The folder is put at the front of ``sys.path`` so the two files can import their
    neighbours (e.g. a local module with a custom head).

    Raises:
        ExperimentError: a file is missing or does not define the expected name.
    """
    folder = os.path.abspath(folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    config_module = _import_file(os.path.join(folder, "config.py"), "config.py is missing")
    if not hasattr(config_module, "config"):
        raise ExperimentError(
            f"{os.path.join(folder, 'config.py')} defines no `config`: it must create the "
            "experiment's config object, e.g. `config = MyConfig()`"
        )
    cfg = config_module.config
    if not isinstance(cfg, BaseConfig):
        raise ExperimentError(
            f"{os.path.join(folder, 'config.py')}: `config` is a {type(cfg).__name__}, expected "
            "an instance of a cvpods config class (e.g. a subclass of FCOSConfig)"
        )
    net_module = _import_file(os.path.join(folder, "net.py"), "net.py is missing")
    build_model = getattr(net_module, "build_model", None)
    if not callable(build_model):
        raise ExperimentError(
            f"{os.path.join(folder, 'net.py')} defines no function `build_model(cfg)` returning "
            "the model"
        )
    trainer_class = getattr(net_module, "Trainer", DefaultTrainer)
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, DefaultTrainer)):
        raise ExperimentError(
            f"{os.path.join(folder, 'net.py')}: `Trainer` must be a subclass of "
            f"cvpods.engine.DefaultTrainer, got {trainer_class!r}"
        )
    return cfg, build_model, trainer_class


def prepare_config(cfg: BaseConfig, folder: str, overrides: Sequence[str]) -> BaseConfig:
    """Apply ``KEY VALUE`` overrides; make OUTPUT_DIR absolute (relative to ``folder``)."""
    cfg.merge_from_list(list(overrides))
    output_dir = cfg.OUTPUT_DIR or "./log"
    if not os.path.isabs(output_dir):
        output_dir = os.path.join(os.path.abspath(folder), output_dir)
    cfg.OUTPUT_DIR = os.path.normpath(output_dir)
    return cfg


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    pairs = dict(zip(overrides[0::2], overrides[1::2]))
    return pairs.get(key)


def find_weights_to_test(cfg: BaseConfig, folder: str, overrides: Sequence[str]) -> str:
    """The checkpoint ``cvpods_test`` evaluates.

    MODEL.WEIGHTS when given on the command line (relative to ``folder``), else the newest
    checkpoint of OUTPUT_DIR named by its ``last_checkpoint`` file. MODEL.WEIGHTS set inside
    config.py is not used: it usually names the ImageNet backbone the training started from.

    Raises:
        ExperimentError: the given file does not exist, or there is no checkpoint at all.
    """
    from cvpods.checkpoint import DetectionCheckpointer

    given = _override_value(overrides, "MODEL.WEIGHTS")
    if given:
        if "://" in given:
            return given
        path = given if os.path.isabs(given) else os.path.join(os.path.abspath(folder), given)
        if not os.path.isfile(path):
            raise ExperimentError(f"MODEL.WEIGHTS {given!r}: no such file ({path})")
        return path
    checkpointer = DetectionCheckpointer(nn.Module(), cfg.OUTPUT_DIR, save_to_disk=False)
    if not checkpointer.has_checkpoint():
        raise ExperimentError(
            f"nothing to evaluate: {os.path.join(cfg.OUTPUT_DIR, 'last_checkpoint')} does not "
            f"exist (train first with cvpods_train in {folder}) and no MODEL.WEIGHTS was given "
            "(cvpods_test MODEL.WEIGHTS path/to/model.pth)"
        )
    path = checkpointer.get_checkpoint_file()
    if not os.path.isfile(path):
        raise ExperimentError(
            f"{os.path.join(cfg.OUTPUT_DIR, 'last_checkpoint')} names {path}, which does not exist"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Where results go; guarding OUTPUT_DIR
# ---------------------------------------------------------------------------------------------

#: The folder (inside OUTPUT_DIR) of evaluations of weights other than the run's newest checkpoint.
EVAL_FOLDER = "eval"
#: The file (in an evaluation folder) naming the weights evaluated there.
WEIGHTS_RECORD = "weights.txt"


@dataclass
class EvaluationTarget:
    """Where an evaluation writes: its OUTPUT_DIR and config dump (relative to it)."""

    output_dir: str
    config_dump: str
    own_checkpoint: bool
    note: str = ""


def _same_path(a: str, b: str) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def _weights_stem(weights: str) -> str:
    path = urllib.parse.urlparse(weights).path if "://" in weights else weights
    stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in stem) or "weights"


def _read_record(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def evaluation_target(cfg: BaseConfig, weights: str) -> EvaluationTarget:
    """Where evaluating ``weights`` writes, so that it never overwrites the training record.

    The run's newest checkpoint (named by OUTPUT_DIR/last_checkpoint) is evaluated into
    OUTPUT_DIR itself (``inference/<dataset>/results.json``, config in
    ``inference/config_dump.py``), unless a training run holds OUTPUT_DIR right now. Any other
    weights go to ``OUTPUT_DIR/eval/<weights file name>/`` (``-<hash>`` appended when that folder
    belongs to another file of the same name; ``weights.txt`` there records which).
    """
    from cvpods.checkpoint import DetectionCheckpointer

    output_dir = cfg.OUTPUT_DIR
    checkpointer = DetectionCheckpointer(nn.Module(), output_dir, save_to_disk=False)
    try:
        newest = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""
    except ValueError:  # an empty last_checkpoint file: no newest checkpoint
        newest = ""
    note = ""
    if "://" not in weights and _same_path(weights, newest):
        owner = OutputDirLock.holder(output_dir)
        if owner is None:
            return EvaluationTarget(
                output_dir, os.path.join("inference", CONFIG_DUMP_FILE), own_checkpoint=True
            )
        note = (
            f"{output_dir} is in use by PID {owner.get('pid')} on {owner.get('host')}, so this "
            "evaluation goes to its own folder"
        )
    stem = _weights_stem(weights)
    target = os.path.join(output_dir, EVAL_FOLDER, stem)
    recorded = _read_record(os.path.join(target, WEIGHTS_RECORD))
    if recorded and recorded != _weights_identity(weights):
        digest = hashlib.sha1(_weights_identity(weights).encode()).hexdigest()[:8]
        target = f"{target}-{digest}"
    return EvaluationTarget(target, CONFIG_DUMP_FILE, own_checkpoint=False, note=note)


def _weights_identity(weights: str) -> str:
    return weights if "://" in weights else os.path.realpath(weights)


def _move_aside_message(previous: str, target: str) -> str:
    return f"--start-over: moved the previous contents of {previous} to {target}"


def prepare_training_folder(
    cfg: BaseConfig, args: argparse.Namespace, lock: OutputDirLock
) -> list[str]:
    """Make OUTPUT_DIR ready for ``cvpods_train`` (call it holding ``lock``, OUTPUT_DIR's lock).

    ``--start-over`` moves a non-empty OUTPUT_DIR to ``OUTPUT_DIR.old-<timestamp>`` (and locks
    the new, empty one). Otherwise temporary files of interrupted writes are removed and a
    folder holding checkpoints of an earlier run is refused without ``--resume``.

    Returns:
        what was done, as messages for the run's log.

    Raises:
        ExperimentError: OUTPUT_DIR holds a run and neither --resume nor --start-over was given.
    """
    output_dir = cfg.OUTPUT_DIR
    notes = [lock.stale_message()] if lock.stale_record else []
    if getattr(args, "start_over", False):
        if any(name != LOCK_FILE for name in os.listdir(output_dir)):
            target = lock.move_folder_aside()
            lock.acquire()
            notes.append(_move_aside_message(output_dir, target))
        return notes
    folders = [output_dir]
    inference = os.path.join(output_dir, "inference")
    if os.path.isdir(inference):
        folders += [inference]
        folders += [os.path.join(inference, name) for name in sorted(os.listdir(inference))]
    for folder in folders:
        for path in remove_temporary_files(folder):
            notes.append(f"Removed {path}, left by an interrupted write")
    previous = previous_run(output_dir)
    if previous is None or args.resume or args.eval_only:
        return notes
    again = " (a finished run is only evaluated again)" if previous.finished else ""
    raise ExperimentError(
        f"{output_dir} already holds {previous.describe()}; training from scratch would "
        f"overwrite it. Use --resume to continue it{again}, or --start-over to move it aside to "
        f"{output_dir}.old-<timestamp> and train from scratch (or set another OUTPUT_DIR)"
    )


# ---------------------------------------------------------------------------------------------
# What each process runs
# ---------------------------------------------------------------------------------------------


def _summarise(cfg: BaseConfig, results: dict[str, Any] | None, weights: str | None) -> None:
    """Log the final metrics table and where the outputs are (rank 0)."""
    from tabulate import tabulate

    if not comm.is_main_process():
        return
    rows = []
    for dataset, dataset_results in (results or {}).items():
        for task, metrics in (dataset_results or {}).items():
            if not isinstance(metrics, dict):
                continue
            shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            keys = [k for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "avg") if k in shown]
            keys = keys or list(shown)[:6]
            text = "  ".join(
                f"{k}={shown[k]}" if isinstance(shown[k], int) else f"{k}={shown[k]:.3f}"
                for k in keys
            )
            rows.append([dataset, task, text])
    lines = [f"Outputs are in {cfg.OUTPUT_DIR}:"]
    if weights:
        lines.append(f"  weights evaluated: {weights}")
    lines.append(f"  log: {os.path.join(cfg.OUTPUT_DIR, 'log.txt')}")
    for dataset in results or {}:
        lines.append(f"  final metrics of {dataset}: {results_file(cfg.OUTPUT_DIR, dataset)}")
    if rows:
        lines.append("Final metrics:\n" + tabulate(rows, headers=["dataset", "task", "metrics"]))
    else:
        lines.append("No evaluation results (DATASETS.TEST is empty).")
    logger.info("\n".join(lines))


def _evaluate(
    cfg: BaseConfig, build_model: Callable, trainer_class: type[DefaultTrainer], weights: str
) -> dict[str, Any]:
    from cvpods.checkpoint import DetectionCheckpointer

    model = build_model(cfg)
    model.to(cfg.MODEL.DEVICE)
    min_fraction = cfg.MODEL.get("WEIGHTS_MIN_MATCHED_FRACTION", DEFAULT_MIN_MATCHED_FRACTION)
    DetectionCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=False, cfg=cfg).load(
        weights, checkpointables=[], min_matched_fraction=min_fraction
    )
    results = trainer_class.test(cfg, model)
    _summarise(cfg, results, weights)
    return results


def _eval_only_weights(cfg: BaseConfig, folder: str, args: argparse.Namespace) -> str:
    """``cvpods_train --eval-only``: the newest checkpoint with --resume, else MODEL.WEIGHTS."""
    if args.resume or _override_value(args.opts, "MODEL.WEIGHTS"):
        return find_weights_to_test(cfg, folder, args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise ExperimentError(
            "--eval-only needs --resume (the newest checkpoint in OUTPUT_DIR) or MODEL.WEIGHTS"
        )
    return cfg.MODEL.WEIGHTS


def _log_notes(notes: Sequence[str]) -> None:
    """Log (rank 0) what the launcher did before the processes started."""
    if comm.is_main_process():
        for note in notes:
            logger.warning("%s", note)


def _evaluation_setup(
    cfg: BaseConfig, args: argparse.Namespace, weights: str, target: EvaluationTarget
) -> None:
    """Point ``cfg`` at the evaluation's folder and weights, then :func:`default_setup`."""
    cfg.OUTPUT_DIR = target.output_dir
    cfg.MODEL.WEIGHTS = weights
    default_setup(cfg, args, config_dump=target.config_dump)
    _log_notes([target.note] if target.note else [])


def _train_worker(
    folder: str,
    args: argparse.Namespace,
    weights: str | None = None,
    target: EvaluationTarget | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any] | None:
    cfg, build_model, trainer_class = load_experiment_with_trainer(folder)
    prepare_config(cfg, folder, args.opts)
    if args.eval_only:
        weights = weights or _eval_only_weights(cfg, folder, args)
        _evaluation_setup(cfg, args, weights, target or evaluation_target(cfg, weights))
        return _evaluate(cfg, build_model, trainer_class, weights)
    default_setup(cfg, args)
    _log_notes(notes)
    trainer = trainer_class(cfg, build_model)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    _summarise(cfg, results, None)
    return results


def _test_worker(
    folder: str,
    args: argparse.Namespace,
    weights: str,
    target: EvaluationTarget | None = None,
) -> dict[str, Any]:
    cfg, build_model, trainer_class = load_experiment_with_trainer(folder)
    prepare_config(cfg, folder, args.opts)
    _evaluation_setup(cfg, args, weights, target or evaluation_target(cfg, weights))
    return _evaluate(cfg, build_model, trainer_class, weights)


# ---------------------------------------------------------------------------------------------
# Console scripts
# ---------------------------------------------------------------------------------------------


def _parse(
    argv: Sequence[str] | None, prog: str, description: str, training: bool = True
) -> argparse.Namespace:
    parser = default_argument_parser(description, training=training)
    parser.prog = prog
    add_precision_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides come as KEY VALUE pairs; got {args.opts}")
    args.opts = [*args.opts, *precision_overrides(args)]
    return args


#: Errors whose message says everything: printed as one "<prog>: error: ..." line, no traceback.
_USER_ERRORS = (
    ExperimentError,
    ConfigError,
    OutputDirLockedError,
    BadDataError,
    WeightsMismatchError,
    NotACheckpointError,
    UnsafeCheckpointError,
    DiskFullError,
    FileNotFoundError,
)


def _fail(prog: str, error: Exception, code: int = 2) -> SystemExit:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return SystemExit(code)


def _check_weights(weights: str) -> None:
    """Refuse a local weights file that is no checkpoint at all, before starting processes."""
    if "://" not in weights:
        check_checkpoint_file(weights)


def _lock(prog: str, folder: str, args: argparse.Namespace) -> OutputDirLock | None:
    """Take ``folder``'s lock (machine 0 only: the other machines write no files there)."""
    if args.machine_rank != 0:
        return None
    lock = OutputDirLock(folder, command=" ".join([prog, *sys.argv[1:]]))
    try:
        return lock.acquire()
    except OutputDirLockedError as error:
        raise _fail(prog, error) from None


# The line of a traceback that names the exception: "package.module.SomeError: message".
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception): (.*)$")


def child_error_message(traceback_text: str) -> str:
    """The message of the exception at the end of a worker's traceback (all its lines), without
    the exception's module and class; the last line if no exception line is found."""
    lines = traceback_text.rstrip().splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[index])
        if match:
            return "\n".join([match.group(1), *lines[index + 1 :]])
    return lines[-1] if lines else traceback_text


def _launch(prog: str, worker: Callable, args: argparse.Namespace, worker_args: tuple) -> None:
    """Run the workers; errors a person can act on end with one ``<prog>: error: ...``."""
    import torch.multiprocessing as mp

    try:
        launch(
            worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=worker_args,
        )
    except _USER_ERRORS as error:
        raise _fail(prog, error, code=1) from None
    except mp.ProcessRaisedException as error:  # a spawned worker failed: its traceback first
        text = str(error)
        print(text.rstrip(), file=sys.stderr)
        raise _fail(prog, child_error_message(text), code=1) from None


def _record_weights(target: EvaluationTarget, weights: str) -> None:
    if not target.own_checkpoint:
        atomic_write_text(
            _weights_identity(weights) + "\n", os.path.join(target.output_dir, WEIGHTS_RECORD)
        )


def train_main(argv: Sequence[str] | None = None) -> None:
    """``cvpods_train``: train the experiment of the current folder, then evaluate it."""
    prog = "cvpods_train"
    args = _parse(argv, prog, "Train (then evaluate) the experiment in this folder.")
    folder = os.getcwd()
    weights, target = None, None
    try:
        # Fail fast, before spawning processes, on a broken folder or bad overrides.
        cfg, _ = load_experiment(folder)
        prepare_config(cfg, folder, args.opts)
        if args.eval_only:
            weights = _eval_only_weights(cfg, folder, args)
            _check_weights(weights)
            target = evaluation_target(cfg, weights)
    except _USER_ERRORS as error:
        raise _fail(prog, error) from None
    lock = _lock(prog, target.output_dir if target else cfg.OUTPUT_DIR, args)
    notes: list[str] = []
    try:
        if lock is not None and target is None:
            try:
                notes = prepare_training_folder(cfg, args, lock)
            except ExperimentError as error:
                raise _fail(prog, error) from None
        if target is not None and lock is not None:
            _record_weights(target, weights)
        _launch(prog, _train_worker, args, (folder, args, weights, target, notes))
    finally:
        if lock is not None:
            lock.release()


def test_main(argv: Sequence[str] | None = None) -> None:
    """``cvpods_test``: evaluate the newest checkpoint of this folder (or MODEL.WEIGHTS)."""
    prog = "cvpods_test"
    args = _parse(argv, prog, "Evaluate the experiment in this folder.", training=False)
    folder = os.getcwd()
    try:
        cfg, _ = load_experiment(folder)
        prepare_config(cfg, folder, args.opts)
        weights = find_weights_to_test(cfg, folder, args.opts)
        _check_weights(weights)
        target = evaluation_target(cfg, weights)
    except _USER_ERRORS as error:
        raise _fail(prog, error) from None
    lock = _lock(prog, target.output_dir, args)
    try:
        if lock is not None:
            _record_weights(target, weights)
        _launch(prog, _test_worker, args, (folder, args, weights, target))
    finally:
        if lock is not None:
            lock.release()
