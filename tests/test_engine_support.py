"""A tiny fake experiment (config.py + net.py) for the engine and launcher tests (no tests here).

The model is a GroupNorm conv net on 16x16 random images regressing 2 numbers; its losses are
means over the images of a batch, so data-parallel training equals single-process training with
the same total batch. With MODEL.FAKE.RANDOM it uses the Python, NumPy and torch global
generators (random flip, random loss weight, dropout), which exact resumption must restore. The
loader makes global batch ``i``, image ``j`` from the seed ``(SEED, i, j)`` and gives position
``j`` to process ``j % world_size``; it starts at ``start_iter``. ``Trainer.test`` "evaluates"
with the mean squared error on 8 fixed images and reports it as ``{"fake_val": {"bbox":
{"AP": ...}}}``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

FAKE_CONFIG = """
from cvpods.configs import BaseDetectionConfig


class FakeConfig(BaseDetectionConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(
            dict(
                MODEL=dict(DEVICE="cpu", FAKE=dict(RANDOM=True, SLEEP=0.0, NAN_AT=-1)),
                DATASETS=dict(TRAIN=("fake_train",), TEST=("fake_val",)),
                DATALOADER=dict(NUM_WORKERS=0),
                SOLVER=dict(
                    BASE_LR=0.05,
                    MAX_ITER=12,
                    STEPS=(8,),
                    WARMUP_ITERS=3,
                    IMS_PER_BATCH=4,
                    CHECKPOINT_PERIOD=4,
                    WEIGHT_DECAY=1e-3,
                ),
                SEED=7,
            )
        )


config = FakeConfig()
"""

FAKE_NET = """
import os
import random
import time

import numpy as np
import torch
from torch import nn

from cvpods.engine import DefaultTrainer
from cvpods.engine.defaults import results_file, write_json_atomic
from cvpods.utils import comm
from cvpods.utils.events import get_event_storage


def make_image(seed, iteration, position):
    generator = torch.Generator().manual_seed(seed * 1_000_003 + iteration * 1009 + position)
    image = torch.rand(3, 16, 16, generator=generator) * 255.0
    target = torch.rand(2, generator=generator)
    return {"image": image, "target": target, "height": 16, "width": 16}


class FakeLoader:
    def __init__(self, total_batch, seed, start_iter=0):
        self.total_batch, self.seed, self.start_iter = total_batch, seed, start_iter

    def __iter__(self):
        rank, world = comm.get_rank(), comm.get_world_size()
        iteration = self.start_iter
        while True:
            yield [
                make_image(self.seed, iteration, j) for j in range(rank, self.total_batch, world)
            ]
            iteration += 1


class TinyNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.random = cfg.MODEL.FAKE.RANDOM
        self.sleep = cfg.MODEL.FAKE.SLEEP
        self.nan_at = cfg.MODEL.FAKE.NAN_AT
        self.calls = 0
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 2)
        self.dropout = nn.Dropout(0.3 if self.random else 0.0)

    @property
    def device(self):
        return self.head.weight.device

    def forward(self, batched_inputs):
        images = torch.stack([d["image"] for d in batched_inputs]).to(self.device) / 255.0
        targets = torch.stack([d["target"] for d in batched_inputs]).to(self.device)
        if self.training and self.random and np.random.rand() < 0.5:
            images = images.flip(-1)
        features = torch.relu(self.norm(self.conv(images))).mean(dim=(2, 3))
        predictions = self.head(self.dropout(features))
        if not self.training:
            return [{"prediction": p} for p in predictions]
        if self.sleep:
            time.sleep(self.sleep)
        weight = 1.0 + (random.random() if self.random else 0.0)
        try:
            get_event_storage().put_scalar("complexity_ratio", 0.5)
        except RuntimeError:
            pass
        losses = {
            "loss_l2": weight * ((predictions - targets) ** 2).mean(),
            "loss_l1": 0.1 * (predictions - targets).abs().mean(),
        }
        self.calls += 1
        if self.calls - 1 == self.nan_at:
            losses["loss_l1"] = losses["loss_l1"] * float("nan")
        return losses


def build_model(cfg):
    return TinyNet(cfg)


class Trainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg, start_iter=0):
        return FakeLoader(cfg.SOLVER.IMS_PER_BATCH, cfg.SEED, start_iter)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        was_training = model.training
        model.eval()
        with torch.no_grad():
            data = [make_image(12345, 0, j) for j in range(8)]
            outputs = model(data)
        model.train(was_training)
        error = torch.stack(
            [(o["prediction"] - d["target"]).pow(2).mean() for o, d in zip(outputs, data)]
        ).mean()
        results = {"fake_val": {"bbox": {"AP": 100.0 * float(torch.exp(-error))}}}
        if comm.is_main_process():
            write_json_atomic(results["fake_val"], results_file(cfg.OUTPUT_DIR, "fake_val"))
        return results
"""


def write_fake_experiment(folder: Path) -> Path:
    """Write config.py and net.py of the fake experiment into ``folder``; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.py").write_text(textwrap.dedent(FAKE_CONFIG))
    (folder / "net.py").write_text(textwrap.dedent(FAKE_NET))
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run each test with one torch thread (small models; the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
