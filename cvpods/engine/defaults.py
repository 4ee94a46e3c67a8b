"""The standard training set-up: argument parser, ``default_setup`` and :class:`DefaultTrainer`.

Typical use (what ``cvpods_train`` does inside each process)::

    default_setup(cfg, args)
    trainer = DefaultTrainer(cfg, build_model)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvpods.configs.scaling import adjust_config
from cvpods.utils import comm
from cvpods.utils.env import collect_env_info, get_rng_state, seed_all_rng, set_rng_state
from cvpods.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from cvpods.utils.logger import setup_logger

from . import hooks
from .train_loop import SimpleTrainer

__all__ = [
    "CONFIG_DUMP_FILE",
    "DefaultTrainer",
    "default_argument_parser",
    "default_setup",
    "results_file",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

# default_setup writes the full config (a Python literal, readable by cfg.load_dump) here,
# preceded by comment lines listing the keys changed from the library defaults.
CONFIG_DUMP_FILE = "config_dump.py"


def default_argument_parser(
    description: str | None = None, *, training: bool = True
) -> argparse.ArgumentParser:
    """The command line shared by ``cvpods_train`` and ``cvpods_test``.

    ``[--num-gpus N | --gpu-nums N] [--num-machines M] [--machine-rank R] [--dist-url URL]
    [--resume | --start-over] [--eval-only] [KEY VALUE ...]``; the training-only flags
    (``--resume``, ``--start-over``, ``--eval-only``) only with ``training=True``. Parse with
    ``parser.parse_intermixed_args()`` so that options may also follow the ``KEY VALUE``
    overrides.
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="KEY VALUE pairs override config keys, e.g. SOLVER.BASE_LR 0.005 "
        "DATASETS.TEST \"('shapes_val',)\"",
    )
    parser.add_argument(
        "--num-gpus",
        "--gpu-nums",
        dest="num_gpus",
        type=int,
        default=1,
        help="GPUs per machine (processes per machine on a CPU-only machine); "
        "--gpu-nums is the same option",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="machines taking part")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's index")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous URL of the process group (tcp://HOST:PORT); 'auto' picks a free "
        "local port (one machine)",
    )
    if training:
        restart = parser.add_mutually_exclusive_group()
        restart.add_argument(
            "--resume",
            action="store_true",
            help="continue from the newest checkpoint in OUTPUT_DIR (its last_checkpoint file)",
        )
        restart.add_argument(
            "--start-over",
            action="store_true",
            help="train from scratch although OUTPUT_DIR holds a run: that run is moved aside to "
            "OUTPUT_DIR.old-<timestamp> (nothing is deleted)",
        )
        parser.add_argument("--eval-only", action="store_true", help="evaluate only, do not train")
    parser.add_argument(
        "opts",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs (values are Python literals or strings)",
    )
    return parser


def write_json_atomic(obj: Any, path: str) -> None:
    """``obj`` as indented, strict JSON in ``path``, through a temporary file and a rename.

    Tensors and numpy values are converted; NaN and infinities become ``null`` with a reason
    under ``"null_reasons"`` (see :func:`cvpods.evaluation.testing.strict_json_results`), so the
    file never holds the non-standard ``NaN`` token.
    """
    from cvpods.checkpoint.file_io import atomic_write_text
    from cvpods.evaluation.testing import strict_json_results

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if hasattr(value, "item"):  # numpy scalars
            return value.item()
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    plain = json.loads(json.dumps(obj, default=convert))  # NaN survives as float('nan')
    if isinstance(plain, dict):
        plain = strict_json_results(plain)
    atomic_write_text(json.dumps(plain, indent=2, allow_nan=False) + "\n", path)


def _config_dump_text(cfg: Any) -> str:
    """The config dump preceded by ``#`` comment lines of the changes against the defaults."""
    header = ["# Full configuration of this run (a Python literal: BaseConfig.load_dump reads it)."]
    diff = cfg.diff_from_defaults() if hasattr(cfg, "diff_from_defaults") else ""
    if diff:
        header.append("# Changed from the library defaults (KEY: default -> value):")
        header.extend(f"#   {line}" for line in diff.splitlines())
    else:
        header.append("# No key differs from the library defaults.")
    return "\n".join(header) + "\n" + cfg.dump()


def default_setup(
    cfg: Any, args: argparse.Namespace | None = None, config_dump: str = CONFIG_DUMP_FILE
) -> int:
    """Prepare a process for training or evaluation.

    Creates OUTPUT_DIR, sets up logging (console on rank 0, ``OUTPUT_DIR/log.txt`` per rank),
    logs the environment and the arguments, scales the solver to the number of processes
    (:func:`cvpods.configs.scaling.adjust_config`), logs the config changes, writes the full config to
    ``OUTPUT_DIR/config_dump.py`` (rank 0), seeds every generator with ``SEED + rank`` (a
    negative SEED draws one on rank 0 and stores it in ``cfg.SEED``) and applies
    CUDNN_BENCHMARK. ``config_dump`` names the dump file inside OUTPUT_DIR ("" writes none;
    ``cvpods_test`` keeps the training's ``config_dump.py`` and writes its own elsewhere).

    Returns:
        this process's seed.
    """
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()
    setup_logger(output_dir or None, distributed_rank=rank)
    logger.info("Rank of this process: %d. World size: %d", rank, comm.get_world_size())
    logger.info("Environment info:\n%s", collect_env_info())
    if args is not None:
        logger.info("Command line arguments: %s", vars(args))
    # The release's GPU-count scaling (official experiments: SOLVER.IMS_PER_DEVICE set).
    adjust_config(cfg, comm.get_world_size())

    if cfg.SEED < 0:
        cfg.SEED = comm.shared_random_seed()
        logger.info("SEED < 0: drew the seed %d (stored in the config dump)", cfg.SEED)
    seed = seed_all_rng(cfg.SEED + rank)

    diff = cfg.diff_from_defaults() if hasattr(cfg, "diff_from_defaults") else ""
    logger.info("Config changed from the defaults:\n%s", diff or "(nothing)")
    if comm.is_main_process() and output_dir and config_dump:
        from cvpods.checkpoint.file_io import atomic_write_text

        path = os.path.join(output_dir, config_dump)
        atomic_write_text(_config_dump_text(cfg), path)
        logger.info("Full config saved to %s", os.path.abspath(path))

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    return seed


def results_file(output_dir: str, dataset_name: str) -> str:
    """``output_dir/inference/<dataset_name>/results.json`` (written by ``DefaultTrainer.test``)."""
    return os.path.join(output_dir, "inference", dataset_name, "results.json")


class DefaultTrainer(SimpleTrainer):
    """A :class:`SimpleTrainer` built from a config, with the standard hooks.

    It builds the model (``build_model(cfg)``, moved to MODEL.DEVICE, wrapped in
    ``DistributedDataParallel`` when the world size is > 1), the optimizer, the LR scheduler,
    the training loader and a :class:`~cvpods.checkpoint.DetectionCheckpointer` over
    OUTPUT_DIR, and registers :meth:`build_hooks`.

    Checkpoints hold ``model``, ``optimizer``, ``scheduler`` (and ``grad_scaler`` with AMP),
    ``iteration`` and ``rng`` (the Python / NumPy / torch generator states of every process).
    :meth:`resume_or_load` with ``resume=True`` restores all of them and rebuilds the training
    loader with ``start_iter`` (the loader's batches are a function of the seed and the
    iteration), so an interrupted run continues exactly as an uninterrupted one.

    Subclasses may override the ``build_*`` class methods; ``build_train_loader(cfg,
    start_iter)`` must return a loader whose first batch is the one of iteration ``start_iter``.
    """

    #: DistributedDataParallel's find_unused_parameters (models with parameters that get no
    #: gradient in some iterations need True); SOLVER.DDP_FIND_UNUSED_PARAMETERS=True also sets it.
    find_unused_parameters: bool = False

    def __init__(self, cfg: Any, build_model: Callable[[Any], nn.Module]) -> None:
        logger.info("Building the model")
        model = build_model(cfg)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"build_model(cfg) must return an nn.Module, got {type(model).__name__}"
            )
        model.to(torch.device(cfg.MODEL.DEVICE))
        logger.info("Model:\n%s", model)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self.check_test_data(cfg)

        if comm.get_world_size() > 1:
            find_unused = bool(cfg.SOLVER.get("DDP_FIND_UNUSED_PARAMETERS", False)) or bool(
                self.find_unused_parameters
            )
            device_ids = [comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None
            model = DistributedDataParallel(
                model,
                device_ids=device_ids,
                find_unused_parameters=find_unused,
                **_no_per_step_buffer_sync(),
            )
        super().__init__(model, data_loader, optimizer, amp=bool(cfg.SOLVER.AMP.ENABLED))

        self.cfg = cfg
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        from cvpods.checkpoint import DetectionCheckpointer

        checkpointables: dict[str, Any] = {"optimizer": optimizer, "scheduler": self.scheduler}
        if self.grad_scaler is not None:
            checkpointables["grad_scaler"] = self.grad_scaler
        self.checkpointer = DetectionCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            save_to_disk=comm.is_main_process(),
            cfg=cfg,
            **checkpointables,
        )
        self.start_iter = 0
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self._resume_state: dict[str, Any] = {}
        self._eval_hook: hooks.EvalHook | None = None
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ building blocks
    @classmethod
    def build_optimizer(cls, cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
        """SGD over ``model``'s trainable parameters (:func:`cvpods.solver.build_optimizer`)."""
        from cvpods.solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(
        cls, cfg: Any, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """SOLVER.LR_SCHEDULER_NAME with warm-up, stepped once per iteration
        (:func:`cvpods.solver.build_lr_scheduler`)."""
        from cvpods.solver import build_lr_scheduler

        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: Any, start_iter: int = 0) -> Iterable:
        """The infinite training loader, starting at the batch of iteration ``start_iter``."""
        from cvpods.data import build_train_loader

        return build_train_loader(cfg, start_iter=start_iter)

    @classmethod
    def check_test_data(cls, cfg: Any) -> None:
        """Load and check DATASETS.TEST now, so a broken or empty test set stops the run before
        training rather than after it (see :func:`cvpods.data.build.check_datasets`)."""
        from cvpods.data.build import check_datasets

        check_datasets(cfg, list(cfg.DATASETS.TEST))

    @classmethod
    def build_test_loader(cls, cfg: Any, dataset_name: str) -> Iterable:
        """Batches of one image (a list with one dict) of ``dataset_name``, in dataset order,
        with the test-time augmentation (:func:`cvpods.data.build_test_loader`)."""
        from cvpods.data import build_test_loader

        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: str | None = None) -> Any:
        """COCO box AP (writing to ``output_folder``, default ``OUTPUT_DIR/inference/<dataset>/``)
        and the head complexity of a gated head (``"head_cost"`` in the model's outputs)."""
        from cvpods.evaluation import COCOEvaluator, DatasetEvaluators, HeadComplexityEvaluator

        if output_folder is None:
            output_folder = os.path.dirname(results_file(cfg.OUTPUT_DIR, dataset_name))
        return DatasetEvaluators(
            [
                COCOEvaluator(dataset_name, cfg=cfg, distributed=True, output_dir=output_folder),
                HeadComplexityEvaluator(),
            ]
        )

    def build_writers(self) -> list[EventWriter]:
        """Console (with ETA), ``OUTPUT_DIR/metrics.json`` and TensorBoard in OUTPUT_DIR."""
        output_dir = self.cfg.OUTPUT_DIR
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(output_dir, "metrics.json"), start_iter=self.start_iter),
            TensorboardXWriter(output_dir, start_iter=self.start_iter),
        ]

    def build_hooks(self) -> list[hooks.HookBase]:
        """Timer, LR schedule, checkpoints, evaluation and (rank 0) writers, in this order."""
        cfg = self.cfg
        result: list[hooks.HookBase] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
            hooks.PeriodicCheckpointer(
                self.checkpointer,
                int(cfg.SOLVER.CHECKPOINT_PERIOD),
                self.max_iter,
                max_to_keep=int(cfg.SOLVER.CHECKPOINT_MAX_KEEP) or None,
                state_fn=self.checkpoint_state,
            ),
        ]
        if cfg.DATASETS.TEST:
            self._eval_hook = hooks.EvalHook(
                int(cfg.TEST.EVAL_PERIOD), lambda: self.test(self.cfg, self.model)
            )
            result.append(self._eval_hook)
        if comm.is_main_process():
            # The writers are created in before_train: the JSON file depends on start_iter.
            result.append(_LazyPeriodicWriter(self.build_writers, period=20))
        return result

    # ------------------------------------------------------------------ resuming
    def checkpoint_state(self) -> dict[str, Any]:
        """Entries saved with each checkpoint besides the state dicts (collective: all ranks)."""
        return {"rng": comm.gather(get_rng_state())}

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from OUTPUT_DIR's newest checkpoint, or load MODEL.WEIGHTS (model only).

        With ``resume=True`` and a ``last_checkpoint`` file in OUTPUT_DIR, the model, optimizer,
        scheduler, iteration, random generators and data position are restored and training
        continues at the next iteration (the training loader is rebuilt to start there).
        Otherwise only the model weights of MODEL.WEIGHTS are loaded (nothing when it is empty)
        and training starts at iteration 0.
        """
        resuming = resume and self.checkpointer.has_checkpoint()
        extra = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        self._resume_state = {}
        self.start_iter = 0
        if resuming:
            self.start_iter = int(extra.get("iteration", -1)) + 1
            self._resume_state = {k: extra[k] for k in ("rng",) if k in extra}
            logger.info("Resuming at iteration %d", self.start_iter)
            self.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)
            self._data_loader_iter = None

    def _per_rank(self, name: str) -> Any:
        states = self._resume_state.get(name)
        if not states:
            return None
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(states) != world:
            logger.warning(
                "The checkpoint's %s state comes from %d processes, this run has %d; "
                "the continuation will not be identical to an uninterrupted run",
                name,
                len(states),
                world,
            )
        return states[rank % len(states)]

    def _prepare_data(self) -> None:
        """Start the data iterator, then put back the random generators of a resumed run."""
        self._data_loader_iter = iter(self.data_loader)
        rng_state = self._per_rank("rng")
        if rng_state is not None:
            set_rng_state(rng_state)

    # ------------------------------------------------------------------ running
    def train(self) -> Mapping[str, Any] | None:
        """Train from :attr:`start_iter` to SOLVER.MAX_ITER.

        Returns:
            the last evaluation's results (``{dataset: {"bbox": {...}, ...}}``) if DATASETS.TEST
            is set, else None.
        """
        self._prepare_data()
        super().train(self.start_iter, self.max_iter)
        return self._eval_hook.latest_results if self._eval_hook is not None else None

    @classmethod
    def test(
        cls,
        cfg: Any,
        model: nn.Module,
        evaluators: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Evaluate ``model`` on every dataset of DATASETS.TEST.

        Args:
            cfg: the config (DATASETS.TEST, OUTPUT_DIR, data settings).
            model: the model (a DDP wrapper is unwrapped); restored to its training mode after.
            evaluators: one evaluator per dataset; default: :meth:`build_evaluator` (COCO AP
                written to ``OUTPUT_DIR/inference/<dataset>/`` and the head complexity).

        Returns:
            ``{dataset_name: results}`` with results like ``{"bbox": {"AP": ...}, ...}`` (empty
            dicts on processes other than rank 0). Rank 0 also writes each dataset's results
            to ``OUTPUT_DIR/inference/<dataset>/results.json`` (strict JSON: an undefined
            metric is ``null``, with its reason under ``"null_reasons"``).
        """
        from cvpods.evaluation import inference_on_dataset, print_csv_format

        from .precision import apply_inference_dtype, inference_dtype, precision_record

        datasets = list(cfg.DATASETS.TEST)
        if evaluators is not None and len(evaluators) != len(datasets):
            raise ValueError(
                f"{len(evaluators)} evaluators given for {len(datasets)} datasets "
                f"in DATASETS.TEST ({datasets})"
            )
        model = comm.unwrap_model(model)
        was_training = model.training
        results: dict[str, Any] = OrderedDict()
        dtype = inference_dtype(cfg)  # MODEL.INFERENCE_DTYPE (float32 on a CPU without bf16)
        precision = apply_inference_dtype(model, dtype, cfg.MODEL.get("DEVICE"))
        try:
            for index, name in enumerate(datasets):
                loader = cls.build_test_loader(cfg, name)
                evaluator = (
                    evaluators[index] if evaluators is not None else cls.build_evaluator(cfg, name)
                )
                dataset_results = inference_on_dataset(model, loader, evaluator)
                if dataset_results:
                    dataset_results = {**dataset_results, **precision_record(cfg, dtype)}
                results[name] = dataset_results
                if comm.is_main_process() and dataset_results:
                    logger.info("Evaluation results of %s in csv format:", name)
                    print_csv_format(dataset_results)
                    if cfg.OUTPUT_DIR:
                        path = results_file(cfg.OUTPUT_DIR, name)
                        write_json_atomic(dataset_results, path)
                        logger.info("Results of %s written to %s", name, os.path.abspath(path))
        finally:
            model.train(was_training)
            precision.remove()
        return results


class _LazyPeriodicWriter(hooks.PeriodicWriter):
    """A :class:`PeriodicWriter` whose writers are built when training starts."""

    def __init__(self, build_writers: Callable[[], list[EventWriter]], period: int) -> None:
        super().__init__([], period)
        self._build_writers = build_writers

    def before_train(self) -> None:
        self._writers = list(self._build_writers())


def _no_per_step_buffer_sync() -> dict[str, bool]:
    """DDP keyword for "sync buffers (BN statistics) once at wrap time, not at every forward".

    Newer torch spells it ``forward_sync_buffers=False`` (``broadcast_buffers`` is deprecated);
    older torch ``broadcast_buffers=False``.
    """
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
