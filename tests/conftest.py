"""Shared test helpers: the reference fixtures and the playground experiments."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cvpods.engine.launcher import load_experiment as load_experiment_folder

REPO = Path(__file__).resolve().parents[1]
PLAYGROUND = REPO / "cvpods_playground"
REFERENCE = REPO.parent / "shared" / "fixtures" / "reference"

# Small ResNet so that full-model tests stay fast (the full-model fixtures use these widths).
THIN_BACKBONE = {
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 32,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
}


def reference_path(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference fixture {path} is not available")
    return path


def load_reference(name: str) -> dict:
    return torch.load(reference_path(name), map_location="cpu", weights_only=True)


def load_experiment(name: str):
    """``(config, build_model)`` of ``cvpods_playground/<name>`` (a fresh config each call)."""
    return load_experiment_folder(str(PLAYGROUND / name))


@pytest.fixture(autouse=True)
def restore_cvpods_logging() -> Iterator[None]:
    """Undo setup_logger (handlers, propagate=False) after each test, so that later tests of
    the session still see cvpods log records through pytest's caplog (a root handler)."""
    names = ("cvpods", "cvpods_test_logger")
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for name in names:
        logger = logging.getLogger(name)
        handlers, propagate, level = saved[name]
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.propagate = propagate
        logger.setLevel(level)
