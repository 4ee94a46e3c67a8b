"""Training and test data loaders built from a config."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data as data

from ..utils import comm
from .catalog import DatasetCatalog, MetadataCatalog
from .common import DatasetFromList, MapDataset
from .dataset_mapper import DatasetMapper
from .datasets import register_shapes_from_config
from .detection_utils import filter_empty_annotations
from .samplers import InferenceSampler, TrainingBatchSampler, TrainingSampler
from .validation import BadDataError, check_image_files, skipping_bad_data

logger = logging.getLogger(__name__)

__all__ = [
    "get_detection_dataset_dicts",
    "build_train_loader",
    "build_test_loader",
    "check_datasets",
    "skip_bad_data",
    "trivial_batch_collator",
    "resolve_data_seed",
]


def skip_bad_data(cfg: Any) -> bool:
    """``DATASETS.SKIP_BAD_DATA`` (False when the config has no such key)."""
    return bool(cfg.get("DATASETS", {}).get("SKIP_BAD_DATA", False))


def _empty_dataset_message(name: str) -> str:
    json_file = MetadataCatalog.get(name).get("json_file")
    source = f" (annotations: {json_file})" if json_file else ""
    return (
        f"dataset {name!r}{source} has no images: there is nothing to train on or evaluate. "
        "Check the file's 'images' list (and DATASETS.SKIP_BAD_DATA, which leaves bad images "
        "out), or remove the dataset from DATASETS.TRAIN / DATASETS.TEST"
    )


def get_detection_dataset_dicts(
    names: Sequence[str],
    filter_empty: bool = True,
    *,
    check_files: bool = True,
    skip_bad: bool = False,
) -> list[dict]:
    """The dataset dicts of the datasets ``names``, concatenated (same classes required).

    Args:
        names: registered dataset names.
        filter_empty: drop images without a (non-crowd) annotation (training).
        check_files: check every image file (exists, header decodes to the annotated size) with
            :func:`cvpods.data.validation.check_image_files`, so bad data stops the run now, not
            when the image is first sampled.
        skip_bad: leave bad image files and malformed annotations out (counted in the log)
            instead of raising :class:`~cvpods.data.validation.BadDataError`.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("no dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    all_dicts = []
    classes = None
    for name in names:
        with skipping_bad_data(skip_bad):
            dicts = DatasetCatalog.get(name)
        if not dicts:
            raise BadDataError(_empty_dataset_message(name))
        if check_files:
            dicts = check_image_files(dicts, name, skip_bad=skip_bad)
            if not dicts:
                raise BadDataError(_empty_dataset_message(name))
        these = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and these is not None and these != classes:
            raise ValueError(
                f"datasets {list(names)} cannot be combined: {name!r} has classes {these}, "
                f"the previous ones {classes}"
            )
        classes = these if these is not None else classes
        all_dicts.extend(dicts)
    if filter_empty:
        all_dicts = filter_empty_annotations(all_dicts, ", ".join(names))
        if not all_dicts:
            raise ValueError(f"no image of {list(names)} has an annotation to train on")
    return all_dicts


def trivial_batch_collator(batch: list[dict]) -> list[dict]:
    """Batches are plain lists of the mapper's dicts."""
    return batch


def resolve_data_seed(cfg: Any) -> int:
    """``cfg.SEED`` if >= 0, else a random seed shared by all processes (logged)."""
    seed = int(cfg.get("SEED", -1))
    if seed < 0:
        seed = comm.shared_random_seed()
        logger.info("SEED < 0: the data loader uses the random seed %d", seed)
    return seed


def _seed_worker(seed: int, rank: int, worker_id: int) -> None:
    """Seed Python, numpy and torch in a loader worker (for code that uses the global RNGs)."""
    worker_seed = (seed + 7919 * (rank * 1000 + worker_id + 1)) % 2**31
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    torch.manual_seed(worker_seed)


def _loader(dataset: data.Dataset, num_workers: int, seed: int, **kwargs: Any) -> data.DataLoader:
    return data.DataLoader(
        dataset,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=functools.partial(_seed_worker, seed, comm.get_rank()),
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def build_train_loader(
    cfg: Any, mapper: Callable[..., dict] | None = None, start_iter: int = 0
) -> data.DataLoader:
    """An infinite loader of training batches: each batch is a list of the mapper's dicts.

    Each process gets ``SOLVER.IMS_PER_BATCH / world_size`` images per batch from
    ``DATASETS.TRAIN`` (images without annotations dropped if
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), grouped by aspect ratio if
    ``DATALOADER.ASPECT_RATIO_GROUPING``, loaded by ``DATALOADER.NUM_WORKERS`` workers.

    The batches are a pure function of ``cfg.SEED`` (when >= 0): shuffling and augmentations do not
    depend on the number of workers. ``start_iter`` makes the loader start at that iteration's
    batch, which is how an interrupted run resumes with exactly the data it would have seen.
    """
    register_shapes_from_config(cfg)
    world_size = comm.get_world_size()
    total_batch = int(cfg.SOLVER.IMS_PER_BATCH)
    if total_batch % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total_batch}) must be divisible by the number of processes "
            f"({world_size})"
        )
    sampler_name = cfg.DATALOADER.get("SAMPLER_TRAIN", "TrainingSampler")
    if sampler_name != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN: only 'TrainingSampler' exists, got {sampler_name!r}"
        )
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        skip_bad=skip_bad_data(cfg),
    )
    seed = resolve_data_seed(cfg)
    groups = None
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        groups = [int(d["width"] < d["height"]) for d in dicts]
    batch_sampler = TrainingBatchSampler(
        TrainingSampler(len(dicts), seed),
        total_batch // world_size,
        aspect_ratio_groups=groups,
        start_iter=start_iter,
    )
    mapper = mapper if mapper is not None else DatasetMapper(cfg, is_train=True)
    dataset = MapDataset(DatasetFromList(dicts), mapper, seed)
    logger.info(
        "Training data: %d images from %s, %d per process and batch, starting at iteration %d",
        len(dicts),
        list(cfg.DATASETS.TRAIN),
        total_batch // world_size,
        start_iter,
    )
    return _loader(dataset, cfg.DATALOADER.NUM_WORKERS, seed, batch_sampler=batch_sampler)


def build_test_loader(
    cfg: Any, dataset_name: str, mapper: Callable[..., dict] | None = None
) -> data.DataLoader:
    """A loader over ``dataset_name`` (all images, annotated or not), split across processes.

    Batches hold one image (a list with one mapper dict whose height/width are the original size).
    """
    register_shapes_from_config(cfg)
    dicts = get_detection_dataset_dicts(
        [dataset_name], filter_empty=False, skip_bad=skip_bad_data(cfg)
    )
    mapper = mapper if mapper is not None else DatasetMapper(cfg, is_train=False)
    seed = max(int(cfg.get("SEED", 0)), 0)
    dataset = MapDataset(DatasetFromList(dicts), mapper, seed)
    return _loader(
        dataset,
        cfg.DATALOADER.NUM_WORKERS,
        seed,
        sampler=InferenceSampler(len(dicts)),
        batch_size=1,
    )


def check_datasets(cfg: Any, names: Sequence[str]) -> None:
    """Load and check the registered datasets among ``names`` now (annotations and image files).

    The trainer calls it for DATASETS.TEST before training, so that an empty or broken test set
    stops the run at the start instead of after the last iteration. Names that are not
    registered are left to whoever uses them (a custom Trainer may evaluate without the catalog).
    """
    register_shapes_from_config(cfg)
    for name in names:
        if name in DatasetCatalog:
            get_detection_dataset_dicts([name], filter_empty=False, skip_bad=skip_bad_data(cfg))
