"""Mapper output format, samplers and the train/test data loaders (tiny shapes data in tmp)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cvpods.configs import FCOSConfig
from cvpods.data import (
    DatasetCatalog,
    DatasetMapper,
    InferenceSampler,
    TrainingBatchSampler,
    TrainingSampler,
    build_test_loader,
    build_train_loader,
    read_image,
)
from cvpods.structures import Boxes, Instances


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPODS_DATASETS", str(tmp_path))
    cfg = FCOSConfig()
    cfg.DATASETS.TRAIN = ("shapes_train",)
    cfg.DATASETS.TEST = ("shapes_val",)
    cfg.DATASETS.SHAPES.update(NUM_TRAIN=12, NUM_VAL=6, MIN_SIZE=64, MAX_SIZE=112, SEED=4)
    cfg.INPUT.AUG.TRAIN_PIPELINES = [
        (
            "ResizeShortestEdge",
            dict(short_edge_length=(96, 128), max_size=200, sample_style="choice"),
        ),
        ("RandomFlip", dict()),
        ("RandomBrightness", dict(intensity_min=0.9, intensity_max=1.1)),
    ]
    cfg.INPUT.AUG.TEST_PIPELINES = [
        ("ResizeShortestEdge", dict(short_edge_length=96, max_size=200, sample_style="choice"))
    ]
    cfg.SOLVER.IMS_PER_BATCH = 3
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 11
    return cfg


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _same_batches(a, b):
    return all(
        x["image_id"] == y["image_id"] and torch.equal(x["image"], y["image"])
        for batch_a, batch_b in zip(a, b, strict=True)
        for x, y in zip(batch_a, batch_b, strict=True)
    )


def test_train_mapper_output_format(cfg):
    batch = _take(build_train_loader(cfg), 1)[0]
    assert isinstance(batch, list) and len(batch) == 3
    for item in batch:
        image = item["image"]
        assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
        assert min(image.shape[1:]) in (96, 128)
        instances = item["instances"]
        assert isinstance(instances, Instances) and instances.image_size == tuple(image.shape[1:])
        assert isinstance(instances.gt_boxes, Boxes) and len(instances) > 0
        assert instances.gt_classes.dtype == torch.int64
        assert int(instances.gt_classes.min()) >= 0 and int(instances.gt_classes.max()) < 7
        boxes = instances.gt_boxes.tensor
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes[:, 2] <= image.shape[2]).all() and (boxes[:, 3] <= image.shape[1]).all()
        assert 64 <= min(item["height"], item["width"]) <= max(item["height"], item["width"]) <= 112
        assert item["file_name"].endswith(".jpg") and isinstance(item["image_id"], int)


def test_test_mapper_keeps_original_size_and_reads_bgr(cfg):
    loader = build_test_loader(cfg, "shapes_val")
    items = [batch[0] for batch in loader]
    assert len(items) == 6  # every image, even one without annotations
    dicts = {d["image_id"]: d for d in DatasetCatalog.get("shapes_val")}
    for item in items:
        d = dicts[item["image_id"]]
        assert (item["height"], item["width"]) == (d["height"], d["width"])
        assert min(item["image"].shape[1:]) == 96 and "instances" not in item
    # Channel order follows INPUT.FORMAT.
    cfg.INPUT.AUG.TEST_PIPELINES = []
    first = dicts[items[0]["image_id"]]
    bgr = DatasetMapper(cfg, is_train=False)(first)["image"]
    cfg.INPUT.FORMAT = "RGB"
    rgb = DatasetMapper(cfg, is_train=False)(first)["image"]
    assert torch.equal(bgr, rgb.flip(0))
    assert torch.equal(bgr, torch.as_tensor(read_image(first["file_name"])).permute(2, 0, 1))


def test_train_loader_is_deterministic_and_worker_independent(cfg):
    reference = _take(build_train_loader(cfg), 4)
    assert _same_batches(reference, _take(build_train_loader(cfg), 4))
    cfg.DATALOADER.NUM_WORKERS = 2
    assert _same_batches(reference, _take(build_train_loader(cfg), 4))
    cfg.SEED = 12
    assert not _same_batches(reference, _take(build_train_loader(cfg), 4))


def test_train_loader_resumes_at_start_iter(cfg):
    reference = _take(build_train_loader(cfg), 6)
    resumed = _take(build_train_loader(cfg, start_iter=4), 2)
    assert _same_batches(reference[4:], resumed)


def test_aspect_ratio_grouping(cfg):
    for batch in _take(build_train_loader(cfg), 8):
        orientations = {item["width"] < item["height"] for item in batch}
        assert len(orientations) == 1


def test_batch_size_must_divide_over_processes(cfg, monkeypatch):
    from cvpods.utils import comm

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match="IMS_PER_BATCH"):
        build_train_loader(cfg)


def test_training_sampler_splits_one_stream_over_processes():
    single = list(itertools.islice(TrainingSampler(10, seed=3, rank=0, world_size=1), 40))
    assert sorted(i for i, _ in single[:10]) == list(range(10))  # an epoch is a permutation
    assert single[:10] != single[10:20]  # reshuffled each epoch
    ranks = [
        list(itertools.islice(TrainingSampler(10, 3, rank=r, world_size=2), 20)) for r in (0, 1)
    ]
    merged = sorted(ranks[0] + ranks[1], key=lambda sample: sample[1])
    assert merged == single


def test_ungrouped_batches_of_two_processes_union_to_one_process_batch():
    one = TrainingBatchSampler(TrainingSampler(10, 5, rank=0, world_size=1), 4)
    two = [TrainingBatchSampler(TrainingSampler(10, 5, rank=r, world_size=2), 2) for r in (0, 1)]
    for batch, part0, part1 in itertools.islice(zip(one, *two), 6):
        assert sorted(batch) == sorted(part0 + part1)


def test_inference_sampler_covers_everything_once():
    for size, world in ((10, 3), (2, 4), (7, 1)):
        parts = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
        assert list(itertools.chain(*parts)) == list(range(size))
        assert [len(InferenceSampler(size, r, world)) for r in range(world)] == [
            len(p) for p in parts
        ]


def test_grouped_sampler_fast_forward_matches():
    groups = list(np.random.default_rng(0).integers(0, 2, size=20))
    full = list(
        itertools.islice(
            TrainingBatchSampler(TrainingSampler(20, 1, rank=0, world_size=1), 3, groups), 9
        )
    )
    skipped = list(
        itertools.islice(
            TrainingBatchSampler(TrainingSampler(20, 1, rank=0, world_size=1), 3, groups, 5), 4
        )
    )
    assert full[5:] == skipped
    with pytest.raises(ValueError, match="rank"):
        TrainingSampler(20, 1, rank=1, world_size=1)
