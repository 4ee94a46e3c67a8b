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
  ``{"bbox": {"AP": 52.3, "AP50": ...}, "head_complexity": {...}}`` (AP in percent), next to
  the evaluator's ``coco_instances_results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from torch import nn

from cvpods.configs import BaseConfig, ConfigError
from cvpods.utils import comm

from .defaults import DefaultTrainer, default_argument_parser, default_setup, results_file
from .launch import launch

__all__ = [
    "ExperimentError",
    "find_weights_to_test",
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
    DetectionCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=False, cfg=cfg).load(
        weights, checkpointables=[]
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


def _train_worker(folder: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cfg, build_model, trainer_class = load_experiment_with_trainer(folder)
    prepare_config(cfg, folder, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        weights = _eval_only_weights(cfg, folder, args)
        return _evaluate(cfg, build_model, trainer_class, weights)
    trainer = trainer_class(cfg, build_model)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    _summarise(cfg, results, None)
    return results


def _test_worker(folder: str, args: argparse.Namespace, weights: str) -> dict[str, Any]:
    cfg, build_model, trainer_class = load_experiment_with_trainer(folder)
    prepare_config(cfg, folder, args.opts)
    default_setup(cfg, args)
    return _evaluate(cfg, build_model, trainer_class, weights)


# ---------------------------------------------------------------------------------------------
# Console scripts
# ---------------------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None, prog: str, description: str) -> argparse.Namespace:
    parser = default_argument_parser(description)
    parser.prog = prog
    args = parser.parse_intermixed_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides come as KEY VALUE pairs; got {args.opts}")
    return args


def _fail(prog: str, error: Exception) -> SystemExit:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return SystemExit(2)


def train_main(argv: Sequence[str] | None = None) -> None:
    """``cvpods_train``: train the experiment of the current folder, then evaluate it."""
    args = _parse(argv, "cvpods_train", "Train (then evaluate) the experiment in this folder.")
    folder = os.getcwd()
    try:
        # Fail fast, before spawning processes, on a broken folder or bad overrides.
        cfg, _ = load_experiment(folder)
        prepare_config(cfg, folder, args.opts)
        if args.eval_only:
            _eval_only_weights(cfg, folder, args)
    except (ExperimentError, ConfigError) as error:
        raise _fail("cvpods_train", error) from None
    launch(
        _train_worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(folder, args),
    )


def test_main(argv: Sequence[str] | None = None) -> None:
    """``cvpods_test``: evaluate the newest checkpoint of this folder (or MODEL.WEIGHTS)."""
    args = _parse(argv, "cvpods_test", "Evaluate the experiment in this folder.")
    folder = os.getcwd()
    try:
        cfg, _ = load_experiment(folder)
        prepare_config(cfg, folder, args.opts)
        weights = find_weights_to_test(cfg, folder, args.opts)
    except (ExperimentError, ConfigError) as error:
        raise _fail("cvpods_test", error) from None
    launch(
        _test_worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(folder, args, weights),
    )
