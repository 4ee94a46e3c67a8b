"""Shared test helpers: the reference fixtures and the playground experiments."""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cvpods.engine.launcher import load_experiment as load_experiment_folder

REPO = Path(__file__).resolve().parents[1]
PLAYGROUND = REPO / "cvpods_playground"
# The committed official-output fixtures (see tests/fixtures/reference/README.md).
REFERENCE = REPO / "tests" / "fixtures" / "reference"

# Small ResNet so that full-model tests stay fast (the full-model fixtures use these widths).
THIN_BACKBONE = {
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 32,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
}


def reference_path(name: str) -> Path:
    """The committed reference fixture ``name``; a missing one fails the test (never skips)."""
    path = REFERENCE / name
    if not path.exists():
        pytest.fail(f"reference fixture {path} is missing (it is committed under tests/fixtures)")
    return path


def load_reference(name: str) -> dict:
    """A reference fixture with its weights rebuilt bit-identical to the official ones."""
    fixture = torch.load(reference_path(name), map_location="cpu", weights_only=True)
    return _compact_module().expand(fixture)


@functools.cache
def _compact_module():
    """tests/fixtures/reference/compact.py (the fixtures' weight recipes), loaded by path."""
    spec = importlib.util.spec_from_file_location("reference_compact", REFERENCE / "compact.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """The script ``tools/<name>.py`` loaded as a module (the tools are scripts, not a package),
    registered in ``sys.modules`` as ``_tool_<name>`` (dataclasses look their module up there)."""
    module_name = f"_tool_{name}"
    spec = importlib.util.spec_from_file_location(module_name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


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
